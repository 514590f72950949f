//! Discovery through the fake API server and the real kube client, driving the real router
//! (in process, over sockets on 127.0.0.1) in front of mock model pods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use infergate_config::Config;
use infergate_discovery::Backoff;
use infergate_proxy::{Router, Server};
use infergate_testkit::FakeApiServer;
use mock_model::{MockConfig, MockHandle};
use serde_json::{Value, json};
use tokio::sync::oneshot;

// === the rig ===

struct Rig {
    api: FakeApiServer,
    http: SocketAddr,
    admin: SocketAddr,
    router: Arc<Router>,
    stop: Option<oneshot::Sender<()>>,
    discovery: tokio::task::JoinHandle<()>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.discovery.abort();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Short backoff so outages heal within the test's time.
const FAST: Backoff = Backoff {
    min: Duration::from_millis(50),
    max: Duration::from_millis(400),
};

impl Rig {
    async fn start(namespaces: &[&str]) -> Rig {
        Rig::start_with(FakeApiServer::start().await, namespaces).await
    }

    async fn start_with(api: FakeApiServer, namespaces: &[&str]) -> Rig {
        infergate_tls::install_crypto_provider();
        let ns: Vec<String> = namespaces.iter().map(|n| format!("{n:?}")).collect();
        let cfg = Config::from_yaml(
            &format!(
                "allowInsecureConnections: true\n\
                 listen: {{https: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\n\
                 defaults: {{maxQueueWaitMs: 200}}\n\
                 discovery: {{kube: {{namespaces: [{}]}}}}\n",
                ns.join(", ")
            ),
            "<test>",
        )
        .unwrap();
        let server = Server::bind(&cfg).await.expect("router binds");
        assert!(
            !server.readiness().is_ready(),
            "not ready before discovery syncs"
        );
        let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
        let discovery = infergate_discovery::spawn(
            client,
            cfg.discovery.kube.as_ref().unwrap(),
            (cfg.defaults, cfg.request_settings_ceilings),
            server.router().clone(),
            server.readiness().clone(),
            server.registry(),
            FAST,
            None,
        );
        let (http, admin, router) = (
            server.http_addr().unwrap(),
            server.admin_addr(),
            server.router().clone(),
        );
        let (tx, rx) = oneshot::channel();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Rig {
            api,
            http,
            admin,
            router,
            stop: Some(tx),
            discovery,
        }
    }

    async fn ready(&self) -> bool {
        get(self.admin, "/readyz").await.0 == 200
    }

    async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.1
    }

    /// The pods of a deployment in the published table (`None`: no such endpoint).
    fn table_pods(&self, ep: &str, dep: &str) -> Option<Vec<SocketAddr>> {
        let t = self.router.table();
        let e = t.endpoint(ep)?;
        Some(
            e.deployment(dep.as_bytes())
                .map(|d| d.pods.to_vec())
                .unwrap_or_default(),
        )
    }

    async fn score(&self, ep: &str) -> (u16, Value) {
        post(self.http, &format!("/api/v1/endpoint/{ep}/score")).await
    }

    async fn score_with(&self, ep: &str, bearer: &str) -> u16 {
        post_with(
            self.http,
            &format!("/api/v1/endpoint/{ep}/score"),
            Some(bearer),
        )
        .await
        .0
    }

    fn status(&self, ns: &str, name: &str) -> Value {
        self.api
            .get("InferenceEndpoint", ns, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let c = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let r = c
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .unwrap();
    let code = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (code, String::from_utf8_lossy(&b).into_owned())
}

async fn post(addr: SocketAddr, path: &str) -> (u16, Value) {
    post_with(addr, path, None).await
}

/// A scoring POST, with `Authorization: Bearer <bearer>` when given.
async fn post_with(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let c = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    let req = req
        .body(Full::new(Bytes::from_static(b"{\"data\": [1]}")))
        .unwrap();
    let r = c.request(req).await.unwrap();
    let code = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

async fn mock(name: &str, latency_ms: u64) -> MockHandle {
    mock_model::spawn_local(MockConfig {
        name: name.into(),
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

// === objects ===

/// An InferenceEndpoint with one deployment `blue` on Service `svc`, port `http`, no auth.
fn ie(ns: &str, name: &str, svc: &str) -> Value {
    json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "deployments": [{"name": "blue", "serviceName": svc, "port": "http"}],
            "auth": {"mode": "none"},
        },
    })
}

/// An InferenceEndpoint like [`ie`] with `spec.auth` = `auth`.
fn ie_auth(ns: &str, name: &str, svc: &str, auth: Value) -> Value {
    let mut o = ie(ns, name, svc);
    o["spec"]["auth"] = auth;
    o
}

/// A Secret with these entries (base64 in `data`, as the API server holds them).
fn secret(ns: &str, name: &str, entries: &[(&str, &str)]) -> Value {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let mut s = Secret::default();
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    s.metadata.labels = Some([("infergate.io/auth".to_string(), "true".to_string())].into());
    s.data = Some(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    serde_json::to_value(s).unwrap()
}

#[derive(Clone, Copy)]
enum Cond {
    Ready,
    NotReady,
    Terminating,
}

/// One EndpointSlice of Service `svc` holding one mock pod (its own port, named `http`).
fn slice(ns: &str, name: &str, svc: &str, pods: &[(&MockHandle, &str, Cond)]) -> Value {
    let port = pods.first().map_or(1, |p| p.0.addr().port());
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {
            "kubernetes.io/service-name": svc,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": pods.iter().map(|(_, pod, c)| {
            let (r, s, t) = match c {
                Cond::Ready => (true, true, false),
                Cond::NotReady => (false, false, false),
                Cond::Terminating => (false, true, true),
            };
            json!({
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": r, "serving": s, "terminating": t},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
            })
        }).collect::<Vec<_>>(),
    })
}

fn cond_of<'a>(status: &'a Value, t: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == t))
        .unwrap_or(&Value::Null)
}

/// A key-mode key (at least 16 bytes, as keys must be).
const KEY: &str = "e-key-0123456789abcdef";

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_appear_requests_reach_them_and_status_counts_them() {
    let rig = Rig::start(&[]).await;
    let (a, b) = (mock("a", 0).await, mock("b", 0).await);
    rig.api.apply(ie("ml", "iris", "iris-blue"));
    rig.api.apply(slice(
        "ml",
        "iris-blue-a",
        "iris-blue",
        &[(&a, "pod-a", Cond::Ready)],
    ));
    rig.api.apply(slice(
        "ml",
        "iris-blue-b",
        "iris-blue",
        &[(&b, "pod-b", Cond::Ready)],
    ));
    assert!(eventually(Duration::from_secs(5), async || rig.ready().await).await);
    assert!(
        eventually(Duration::from_secs(5), async || {
            rig.table_pods("iris", "blue").is_some_and(|p| p.len() == 2)
        })
        .await
    );
    for _ in 0..20 {
        let (code, body) = rig.score("iris").await;
        assert_eq!(code, 200, "{body}");
    }
    assert!(
        a.stats().served > 0 && b.stats().served > 0,
        "both pods served"
    );
    assert_eq!(a.stats().served + b.stats().served, 20);

    // The router writes status: ready pods per deployment, Accepted and Ready.
    assert!(
        eventually(Duration::from_secs(5), async || {
            let s = rig.status("ml", "iris");
            s["deployments"][0]["readyPods"] == 2 && cond_of(&s, "Ready")["status"] == "True"
        })
        .await,
        "status: {}",
        rig.status("ml", "iris")
    );
    let s = rig.status("ml", "iris");
    assert_eq!(cond_of(&s, "Accepted")["status"], "True");
    assert!(cond_of(&s, "Accepted")["lastTransitionTime"].is_string());
    let patch = rig
        .api
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(
        patch.path,
        "/apis/infergate.io/v1/namespaces/ml/inferenceendpoints/iris/status"
    );
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watch_event_reaches_the_published_table_fast() {
    let rig = Rig::start(&["ml"]).await;
    let pods = [
        mock("p0", 0).await,
        mock("p1", 0).await,
        mock("p2", 0).await,
    ];
    rig.api.apply(ie("ml", "e", "svc"));
    assert!(eventually(Duration::from_secs(5), async || rig.ready().await).await);
    let mut samples = Vec::new();
    for round in 0..20 {
        let p = &pods[round % 3];
        let t0 = Instant::now();
        rig.api
            .apply(slice("ml", "s", "svc", &[(p, "pod", Cond::Ready)]));
        let want = vec![p.addr()];
        assert!(
            eventually(Duration::from_secs(2), async || {
                rig.table_pods("e", "blue").as_ref() == Some(&want)
            })
            .await,
            "event {round} not published within 2 s"
        );
        samples.push(t0.elapsed());
    }
    samples.sort();
    let (median, max) = (samples[samples.len() / 2], samples[samples.len() - 1]);
    eprintln!(
        "event -> published table: median {median:?}, max {max:?} over {} events",
        samples.len()
    );
    assert!(max < Duration::from_secs(2), "max {max:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_true_only_after_the_first_full_sync() {
    let api = FakeApiServer::start().await;
    api.set_down(true);
    let rig = Rig::start_with(api, &["readyz"]).await;
    rig.api.apply(ie("readyz", "e", "svc"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rig.ready().await, "API server unreachable: not ready");
    assert!(rig.router.table().is_empty());
    rig.api.set_down(false);
    assert!(eventually(Duration::from_secs(5), async || rig.ready().await).await);
    assert!(
        rig.table_pods("e", "blue").is_some(),
        "published with readiness"
    );
    let m = rig.metrics().await;
    // Metrics are per process and tests run in parallel: look at this test's namespace only.
    assert!(
        m.contains(
            "infergate_discovery_lists_total{kind=\"EndpointSlice\",namespace=\"readyz\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "infergate_discovery_watch_errors_total{kind=\"InferenceEndpoint\",namespace=\"readyz\"}"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_turning_not_ready_gets_no_new_requests() {
    let rig = Rig::start(&[]).await;
    let (a, b) = (mock("a", 0).await, mock("b", 0).await);
    rig.api.apply(ie("ml", "e", "svc"));
    rig.api
        .apply(slice("ml", "sa", "svc", &[(&a, "pod-a", Cond::Ready)]));
    rig.api
        .apply(slice("ml", "sb", "svc", &[(&b, "pod-b", Cond::Ready)]));
    assert!(
        eventually(Duration::from_secs(5), async || {
            rig.table_pods("e", "blue").is_some_and(|p| p.len() == 2)
        })
        .await
    );
    rig.api
        .apply(slice("ml", "sb", "svc", &[(&b, "pod-b", Cond::NotReady)]));
    assert!(
        eventually(Duration::from_secs(5), async || {
            rig.table_pods("e", "blue") == Some(vec![a.addr()])
        })
        .await
    );
    b.reset_stats();
    for _ in 0..10 {
        assert_eq!(rig.score("e").await.0, 200);
    }
    assert_eq!(b.stats().served, 0, "the not-ready pod got nothing new");
    assert!(
        eventually(Duration::from_secs(5), async || {
            rig.status("ml", "e")["deployments"][0]["readyPods"] == 1
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_finishes_its_slow_request_and_takes_no_new_ones() {
    let rig = Rig::start(&[]).await;
    let slow = mock("slow", 1500).await;
    let fast = mock("fast", 0).await;
    rig.api.apply(ie("ml", "e", "svc"));
    rig.api.apply(slice(
        "ml",
        "s-slow",
        "svc",
        &[(&slow, "pod-slow", Cond::Ready)],
    ));
    assert!(
        eventually(Duration::from_secs(5), async || {
            rig.table_pods("e", "blue") == Some(vec![slow.addr()])
        })
        .await
    );
    let http = rig.http;
    let inflight = tokio::spawn(async move { post(http, "/api/v1/endpoint/e/score").await });
    assert!(eventually(Duration::from_secs(5), async || slow.stats().in_flight == 1).await);

    // A rollout: the new pod is ready, the old one serving + terminating.
    rig.api.apply(slice(
        "ml",
        "s-fast",
        "svc",
        &[(&fast, "pod-fast", Cond::Ready)],
    ));
    rig.api.apply(slice(
        "ml",
        "s-slow",
        "svc",
        &[(&slow, "pod-slow", Cond::Terminating)],
    ));
    assert!(
        eventually(Duration::from_secs(5), async || {
            rig.table_pods("e", "blue") == Some(vec![fast.addr()])
        })
        .await
    );
    for _ in 0..5 {
        let (code, body) = rig.score("e").await;
        assert_eq!(code, 200);
        assert_eq!(body["pod"], "fast", "{body}");
    }
    let (code, body) = inflight.await.unwrap();
    assert_eq!(code, 200, "the in-flight request completed: {body}");
    assert_eq!(body["pod"], "slow");
    assert_eq!(
        slow.stats().served,
        1,
        "nothing new reached the terminating pod"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            let d = &rig.status("ml", "e")["deployments"][0];
            d["readyPods"] == 1 && d["terminatingPods"] == 1
        })
        .await,
        "{}",
        rig.status("ml", "e")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_deleted_gives_503_and_endpoint_deleted_gives_404() {
    let rig = Rig::start(&[]).await;
    let a = mock("a", 0).await;
    rig.api.apply(ie("ml", "e", "svc"));
    rig.api
        .apply(slice("ml", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("e").await.0
            == 200)
        .await
    );

    // Deleting the Service deletes its EndpointSlices.
    rig.api.delete("EndpointSlice", "ml", "s");
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("e").await.0
            == 503)
        .await
    );
    let (_, body) = rig.score("e").await;
    assert_eq!(body["error"]["code"], "NoPodAvailable", "{body}");
    assert!(
        eventually(Duration::from_secs(5), async || {
            let r = cond_of(&rig.status("ml", "e"), "Ready").clone();
            r["status"] == "False"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Service ml/svc has no EndpointSlices"))
        })
        .await,
        "{}",
        rig.status("ml", "e")
    );

    rig.api.delete("InferenceEndpoint", "ml", "e");
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("e").await.0
            == 404)
        .await
    );
    let (_, body) = rig.score("e").await;
    assert_eq!(body["error"]["code"], "EndpointNotFound", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_keeps_the_last_table_then_converges() {
    let rig = Rig::start(&["outage"]).await;
    let (a, b) = (mock("a", 0).await, mock("b", 0).await);
    rig.api.apply(ie("outage", "e", "svc"));
    rig.api
        .apply(slice("outage", "sa", "svc", &[(&a, "pod-a", Cond::Ready)]));
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("e").await.0
            == 200)
        .await
    );

    rig.api.set_down(true);
    // Changes made while the router cannot see them.
    rig.api.delete("EndpointSlice", "outage", "sa");
    rig.api
        .apply(slice("outage", "sb", "svc", &[(&b, "pod-b", Cond::Ready)]));
    // Metrics are per process and tests run in parallel: look at this test's namespace only.
    let up = |m: &str, kind: &str| -> Option<String> {
        let key = format!("infergate_discovery_watch_up{{kind=\"{kind}\",namespace=\"outage\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&key).map(str::to_string))
    };
    assert!(
        eventually(Duration::from_secs(5), async || {
            let m = rig.metrics().await;
            up(&m, "InferenceEndpoint").as_deref() == Some("0")
                && up(&m, "EndpointSlice").as_deref() == Some("0")
        })
        .await,
        "watch_up shows the outage: {}",
        rig.metrics().await
    );
    for _ in 0..10 {
        let (code, body) = rig.score("e").await;
        assert_eq!(
            (code, body["pod"].as_str()),
            (200, Some("a")),
            "the last table serves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rig.ready().await,
        "an outage does not make the router unready"
    );

    rig.api.set_down(false);
    assert!(
        eventually(Duration::from_secs(10), async || {
            rig.table_pods("e", "blue") == Some(vec![b.addr()])
        })
        .await,
        "converged after the outage"
    );
    assert_eq!(rig.score("e").await.1["pod"], "b");
    // The slice watch sees the missed changes; the quiet endpoint watch counts as up once no
    // retry failed for the recovery window.
    assert!(
        eventually(Duration::from_secs(5), async || {
            let m = rig.metrics().await;
            up(&m, "InferenceEndpoint").as_deref() == Some("1")
                && up(&m, "EndpointSlice").as_deref() == Some("1")
        })
        .await,
        "watch_up back to 1: {}",
        rig.metrics().await
    );
    let m = rig.metrics().await;
    assert!(m.contains("infergate_discovery_watch_errors_total{"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_makes_the_router_relist_and_converge() {
    let rig = Rig::start(&[]).await;
    let (a, b) = (mock("a", 0).await, mock("b", 0).await);
    rig.api.apply(ie("ml", "e", "svc"));
    rig.api
        .apply(slice("ml", "sa", "svc", &[(&a, "pod-a", Cond::Ready)]));
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("e").await.0
            == 200)
        .await
    );
    let lists = |rig: &Rig| {
        rig.api
            .requests()
            .iter()
            .filter(|r| r.is_list_of("endpointslices"))
            .count()
    };
    let before = lists(&rig);

    // 1. The open watches get ERROR 410.
    // InferenceEndpoints, EndpointSlices, Secrets.
    assert!(eventually(Duration::from_secs(5), async || rig.api.open_watches() == 3).await);
    rig.api.expire_watches();
    assert!(
        eventually(Duration::from_secs(5), async || lists(&rig) > before).await,
        "relisted"
    );

    // 2. A missed delete: the watch is cut, the history compacted, then the client comes back
    //    with an old resourceVersion and is told 410: only a relist can see the delete.
    assert!(eventually(Duration::from_secs(5), async || rig.api.open_watches() >= 3).await);
    let before = lists(&rig);
    rig.api.set_down(true);
    rig.api.delete("EndpointSlice", "ml", "sa");
    rig.api
        .apply(slice("ml", "sb", "svc", &[(&b, "pod-b", Cond::Ready)]));
    rig.api.compact();
    rig.api.set_down(false);
    assert!(
        eventually(Duration::from_secs(10), async || {
            rig.table_pods("e", "blue") == Some(vec![b.addr()])
        })
        .await,
        "converged after the relist"
    );
    assert!(lists(&rig) > before);
    let m = rig.metrics().await;
    assert!(m.contains("infergate_discovery_lists_total{"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_and_dropped_watches_resume_without_a_relist() {
    let rig = Rig::start(&["ml"]).await;
    let a = mock("a", 0).await;
    rig.api.apply(ie("ml", "e", "svc"));
    assert!(eventually(Duration::from_secs(5), async || rig.ready().await).await);
    assert!(eventually(Duration::from_secs(5), async || rig.api.open_watches() == 3).await);
    // Unrelated changes move the version; the bookmark tells the client.
    rig.api
        .apply(slice("other", "x", "svc", &[(&a, "p", Cond::Ready)]));
    let bookmarked = rig.api.resource_version();
    rig.api.bookmark();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lists_before = rig
        .api
        .requests()
        .iter()
        .filter(|r| !r.is_watch() && r.method == "GET")
        .count();
    rig.api.drop_watches();
    rig.api
        .apply(slice("ml", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("e").await.0
            == 200)
        .await
    );
    let reqs = rig.api.requests();
    let lists_after = reqs
        .iter()
        .filter(|r| !r.is_watch() && r.method == "GET")
        .count();
    assert_eq!(lists_before, lists_after, "resumed by watch, no relist");
    let rewatch = reqs
        .iter()
        .rev()
        .find(|r| r.is_watch() && r.path.ends_with("/endpointslices"))
        .unwrap();
    assert!(
        rewatch
            .query
            .contains(&format!("resourceVersion={bookmarked}")),
        "resumed from the bookmark: {}",
        rewatch.query
    );
    assert!(
        rewatch
            .path
            .starts_with("/apis/discovery.k8s.io/v1/namespaces/ml/")
    );
    assert!(
        rewatch
            .query
            .contains("labelSelector=kubernetes.io%2Fservice-name"),
        "{}",
        rewatch.query
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_across_namespaces_older_keeps_the_url() {
    let rig = Rig::start(&[]).await;
    let (a, b) = (mock("a", 0).await, mock("b", 0).await);
    let mut older = ie("team-a", "iris", "svc");
    older["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    let mut newer = ie("team-b", "iris", "svc");
    newer["metadata"]["creationTimestamp"] = json!("2026-02-01T00:00:00Z");
    rig.api.apply(newer);
    rig.api.apply(older);
    rig.api
        .apply(slice("team-a", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    rig.api
        .apply(slice("team-b", "s", "svc", &[(&b, "pod-b", Cond::Ready)]));
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("iris").await.0
            == 200)
        .await
    );
    for _ in 0..5 {
        assert_eq!(
            rig.score("iris").await.1["pod"],
            "a",
            "the older endpoint keeps the URL"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), async || {
            cond_of(&rig.status("team-b", "iris"), "Accepted")["reason"] == "NameConflict"
        })
        .await,
        "{}",
        rig.status("team-b", "iris")
    );
    let msg = cond_of(&rig.status("team-b", "iris"), "Accepted")["message"].clone();
    assert!(msg.as_str().unwrap().contains("team-a/iris"), "{msg}");
    assert!(
        eventually(Duration::from_secs(5), async || {
            cond_of(&rig.status("team-a", "iris"), "Accepted")["status"] == "True"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_are_skipped_and_others_keep_serving() {
    let rig = Rig::start(&[]).await;
    let a = mock("a", 0).await;
    rig.api.apply(ie("ml", "good", "svc"));
    rig.api
        .apply(slice("ml", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    let mut bad = ie("ml", "bad", "svc");
    bad["spec"]["traffic"] = json!({"blue": 90});
    rig.api.apply(bad);
    let mut worse = ie("ml", "worse", "svc");
    worse["spec"]["traffic"] = json!({"blue": "lots"});
    rig.api.apply(worse);
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("good").await.0
            == 200)
        .await
    );
    assert_eq!(rig.score("bad").await.0, 404);
    assert_eq!(rig.score("worse").await.0, 404);
    assert!(
        eventually(Duration::from_secs(5), async || {
            let c = cond_of(&rig.status("ml", "bad"), "Accepted").clone();
            c["reason"] == "Invalid"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("spec.traffic") && m.contains("weights sum to 90"))
        })
        .await,
        "{}",
        rig.status("ml", "bad")
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            cond_of(&rig.status("ml", "worse"), "Accepted")["reason"] == "Invalid"
        })
        .await
    );
    let m = rig.metrics().await;
    assert!(
        m.contains("infergate_discovery_endpoints{state=\"not_routed\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_namespaces_only_and_large_lists_page_through() {
    let api = FakeApiServer::start().await;
    let a = mock("a", 0).await;
    // More slices than one page (the watcher asks for 500 at a time).
    for i in 0..620 {
        let mut s = slice("ml", &format!("filler-{i:03}"), &format!("other-{i}"), &[]);
        s["endpoints"] = json!([]);
        api.apply(s);
    }
    let rig = Rig::start_with(api, &["ml", "prod"]).await;
    rig.api.apply(ie("ml", "e", "svc"));
    rig.api
        .apply(slice("ml", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    rig.api.apply(ie("elsewhere", "x", "svc"));
    rig.api.apply(slice(
        "elsewhere",
        "s",
        "svc",
        &[(&a, "pod-a", Cond::Ready)],
    ));
    assert!(
        eventually(Duration::from_secs(5), async || rig.score("e").await.0
            == 200)
        .await
    );
    assert_eq!(rig.score("x").await.0, 404, "not a watched namespace");
    let reqs = rig.api.requests();
    assert!(
        reqs.iter()
            .any(|r| r.is_list_of("endpointslices") && r.query.contains("continue=")),
        "paged with continue"
    );
    for r in reqs.iter().filter(|r| r.method == "GET") {
        assert!(
            r.path.contains("/namespaces/ml/") || r.path.contains("/namespaces/prod/"),
            "only watched namespaces: {}",
            r.path
        );
    }
}

// === keys from Secrets (issue 5) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_secret_rotate_within_a_second_and_a_deleted_secret_refuses_all() {
    let rig = Rig::start(&["keys"]).await;
    let a = mock("a", 0).await;
    rig.api.apply(secret(
        "keys",
        "iris-keys",
        &[
            ("primaryKey", "prim-1-0123456789abcdef"),
            ("secondaryKey", "sec-1-0123456789abcdef"),
        ],
    ));
    rig.api.apply(ie_auth(
        "keys",
        "iris",
        "svc",
        json!({"mode": "key", "secretName": "iris-keys"}),
    ));
    rig.api
        .apply(slice("keys", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    assert!(eventually(Duration::from_secs(5), async || rig.ready().await).await);
    assert!(
        eventually(Duration::from_secs(5), async || rig
            .score_with("iris", "prim-1-0123456789abcdef")
            .await
            == 200)
        .await
    );
    assert_eq!(
        rig.score_with("iris", "sec-1-0123456789abcdef").await,
        200,
        "secondary"
    );
    assert_eq!(rig.score_with("iris", "wrong").await, 401, "wrong key");
    assert_eq!(rig.score("iris").await.0, 401, "no header");
    let served = a.stats().served;

    // Rotation: old primary refused and new one accepted within 1 s of the Secret update.
    let mut took = Vec::new();
    for round in 0..5 {
        let (old, new) = (
            format!("prim-{}-0123456789abcdef", round + 1),
            format!("prim-{}-0123456789abcdef", round + 2),
        );
        let t0 = Instant::now();
        rig.api.apply(secret(
            "keys",
            "iris-keys",
            &[
                ("primaryKey", &new),
                ("secondaryKey", "sec-1-0123456789abcdef"),
            ],
        ));
        let mut done = false;
        while t0.elapsed() < Duration::from_secs(1) {
            if rig.score_with("iris", &new).await == 200
                && rig.score_with("iris", &old).await == 401
            {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(done, "round {round}: rotation not in effect within 1 s");
        took.push(t0.elapsed());
        assert_eq!(
            rig.score_with("iris", "sec-1-0123456789abcdef").await,
            200,
            "secondary kept"
        );
    }
    took.sort();
    eprintln!(
        "Secret update -> new key accepted, old refused: median {:?}, max {:?} over {} rotations",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );

    // Refused requests never reached the pod: one new-primary and one secondary call per round.
    assert_eq!(a.stats().served, served + 5 * 2);

    // Deleted: everyone refused, the reason in status (naming the Secret, not its keys).
    rig.api.delete("Secret", "keys", "iris-keys");
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), async || {
            rig.score_with("iris", "prim-6").await == 401
                && rig.score_with("iris", "sec-1-0123456789abcdef").await == 401
        })
        .await,
        "refused within 1 s of the delete"
    );
    eprintln!("Secret deleted -> refused after {:?}", t0.elapsed());
    assert!(
        eventually(Duration::from_secs(5), async || {
            let s = rig.status("keys", "iris");
            let c = cond_of(&s, "Ready");
            c["reason"] == "AuthNotConfigured"
                && c["message"].as_str().is_some_and(|m| {
                    m.contains("Secret keys/iris-keys (spec.auth.secretName) not found")
                })
        })
        .await,
        "status: {}",
        rig.status("keys", "iris")
    );
    let st = rig.status("keys", "iris").to_string();
    assert!(
        !st.contains("prim-") && !st.contains("sec-1-0123456789abcdef"),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_takes_the_signing_key_from_the_secret() {
    const KEY: &str = "a-signing-key-of-at-least-32-bytes!!";
    let rig = Rig::start(&["tokens"]).await;
    let a = mock("a", 0).await;
    rig.api
        .apply(secret("tokens", "tok-signing", &[("signingKey", KEY)]));
    rig.api.apply(ie_auth(
        "tokens",
        "tok",
        "svc",
        json!({"mode": "token", "secretName": "tok-signing"}),
    ));
    rig.api
        .apply(slice("tokens", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    let token =
        infergate_auth::issue_token("tok", Duration::from_secs(3600), KEY.as_bytes()).unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || rig
            .score_with("tok", &token)
            .await
            == 200)
        .await
    );
    let other =
        infergate_auth::issue_token("other", Duration::from_secs(3600), KEY.as_bytes()).unwrap();
    assert_eq!(rig.score_with("tok", &other).await, 401, "another audience");
    let forged = infergate_auth::issue_token(
        "tok",
        Duration::from_secs(3600),
        b"another-signing-key-of-32-bytes-or-more",
    )
    .unwrap();
    assert_eq!(rig.score_with("tok", &forged).await, 401, "another key");
    assert_eq!(rig.score("tok").await.0, 401);

    // A Secret without `signingKey`: refused, with the reason in status.
    rig.api
        .apply(secret("tokens", "tok-signing", &[("primaryKey", "x")]));
    assert!(
        eventually(Duration::from_secs(1), async || rig
            .score_with("tok", &token)
            .await
            == 401)
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            cond_of(&rig.status("tokens", "tok"), "Ready")["message"]
                .as_str()
                .is_some_and(|m| {
                    m.contains("Secret tokens/tok-signing") && m.contains("signingKey")
                })
        })
        .await,
        "status: {}",
        rig.status("tokens", "tok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_missing_at_start_refuses_with_the_reason_until_it_is_created() {
    let api = FakeApiServer::start().await;
    let a = mock("a", 0).await;
    api.apply(ie_auth(
        "nokeys",
        "e",
        "svc",
        json!({"mode": "key", "secretName": "e-keys"}),
    ));
    api.apply(slice("nokeys", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    // A Secret of the namespace that no endpoint names: watched, ignored.
    api.apply(secret("nokeys", "unrelated", &[("primaryKey", "k")]));
    let rig = Rig::start_with(api, &["nokeys"]).await;
    assert!(eventually(Duration::from_secs(5), async || rig.ready().await).await);
    assert!(rig.table_pods("e", "blue").is_some(), "routed");
    assert_eq!(rig.score_with("e", KEY).await, 401);
    assert_eq!(rig.score("e").await.0, 401);
    assert!(
        eventually(Duration::from_secs(5), async || {
            let s = rig.status("nokeys", "e");
            let c = cond_of(&s, "Ready");
            c["status"] == "False"
                && c["reason"] == "AuthNotConfigured"
                && c["message"].as_str().is_some_and(|m| {
                    m.contains("every request is refused (401)")
                        && m.contains("Secret nokeys/e-keys (spec.auth.secretName) not found")
                })
        })
        .await,
        "status: {}",
        rig.status("nokeys", "e")
    );
    assert_eq!(a.stats().served, 0, "no refused request reached the pod");
    // The Secret watch is part of the first sync and lists the namespace.
    assert!(
        rig.api
            .requests()
            .iter()
            .any(|r| r.is_list_of("secrets") && r.path == "/api/v1/namespaces/nokeys/secrets")
    );

    // Created: served, and the status says so.
    rig.api
        .apply(secret("nokeys", "e-keys", &[("primaryKey", KEY)]));
    assert!(
        eventually(Duration::from_secs(1), async || rig
            .score_with("e", KEY)
            .await
            == 200)
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            cond_of(&rig.status("nokeys", "e"), "Ready")["reason"] == "PodsReady"
        })
        .await
    );
}

// === a dead discovery task ===

/// Log lines written through a `tracing` subscriber, kept for assertions.
#[derive(Clone, Default)]
struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

/// One thread: the subscriber set for this test sees the discovery task's log too.
#[tokio::test(flavor = "current_thread")]
async fn dead_discovery_task_turns_readyz_503() {
    use futures_util::{StreamExt, stream};
    use infergate_discovery::{Discovery, Feed};
    use kube::api::DynamicObject;
    use kube::runtime::watcher::{self, Event};

    let logs = Logs::default();
    let sink = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish(),
    );
    infergate_tls::install_crypto_provider();
    let cfg = Config::from_yaml(
        "allowInsecureConnections: true\n\
         listen: {https: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n\
         discovery: {kube: {namespaces: [ml]}}\n",
        "<test>",
    )
    .unwrap();
    let server = Server::bind(&cfg).await.expect("router binds");
    let admin = server.admin_addr();
    // A feed that lists, then hits a bug when told to.
    let (bug, bug_rx) = oneshot::channel::<()>();
    let feed = stream::iter(vec![Ok(Event::Init), Ok(Event::InitDone)]).chain(
        stream::once(async move {
            let _ = bug_rx.await;
        })
        .map(|()| -> watcher::Result<Event<DynamicObject>> { panic!("a bug in discovery (test)") }),
    );
    let task = Discovery::new(cfg.defaults, server.router().clone())
        .with_registry(server.registry())
        .with_readiness(server.readiness().clone())
        .spawn(vec![Feed::endpoints(Some("ml"), feed)]);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    assert!(
        eventually(Duration::from_secs(5), async || get(admin, "/readyz")
            .await
            .0
            == 200)
        .await
    );

    bug.send(()).unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || get(admin, "/readyz")
            .await
            .0
            == 503)
        .await,
        "/readyz still 200 after the discovery task died"
    );
    assert!(task.await.is_ok(), "the supervisor itself ends cleanly");
    let metrics = get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("infergate_discovery_synced 0"),
        "{metrics}"
    );
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("discovery task panicked"))
        .unwrap_or_else(|| panic!("no log line: {text}"));
    assert!(
        line.contains("ERROR") && line.contains("a bug in discovery (test)"),
        "{line}"
    );
    // Still not ready a while later: nothing turns it back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(admin, "/readyz").await.0, 503);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_override_of_2_pow_64_is_refused_at_its_ceiling() {
    // A tenant's InferenceEndpoint asks for timeouts and queue lengths up to 2^64: the router
    // refuses the object (404, `Accepted=False, reason Invalid` naming the key, the value and
    // the router's ceiling) instead of running a deployment with them; others keep serving.
    let rig = Rig::start(&[]).await;
    let a = mock("a", 0).await;
    rig.api
        .apply(slice("ml", "s", "svc", &[(&a, "pod-a", Cond::Ready)]));
    rig.api.apply(ie("ml", "good", "svc"));
    let with = |name: &str, settings: Value| {
        let mut o = ie("ml", name, "svc");
        o["spec"]["deployments"][0]["requestSettings"] = settings;
        o
    };
    rig.api.apply(with(
        "huge",
        json!({"requestTimeoutMs": u64::MAX, "maxQueueLength": u32::MAX}),
    ));
    let two_pow_64: Value = serde_json::from_str("18446744073709551616").unwrap();
    rig.api
        .apply(with("over", json!({"maxQueueWaitMs": two_pow_64})));
    rig.api.apply(with(
        "at-ceiling",
        json!({"requestTimeoutMs": 600000, "ejectionMaxMs": 3600000}),
    ));
    for ok in ["good", "at-ceiling"] {
        assert!(
            eventually(Duration::from_secs(5), async || rig.score(ok).await.0
                == 200)
            .await,
            "{ok}"
        );
    }
    for (name, key, says) in [
        (
            "huge",
            "spec.deployments[0].requestSettings.requestTimeoutMs",
            "ceiling of 600000 (requestSettingsCeilings.requestTimeoutMs)",
        ),
        (
            "over",
            "spec.deployments[0].requestSettings.maxQueueWaitMs",
            "not a whole number",
        ),
    ] {
        assert_eq!(rig.score(name).await.0, 404, "{name} is not routed");
        assert!(
            eventually(Duration::from_secs(5), async || {
                let c = cond_of(&rig.status("ml", name), "Accepted").clone();
                c["status"] == "False"
                    && c["reason"] == "Invalid"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(key) && m.contains(says))
            })
            .await,
            "{name}: {}",
            rig.status("ml", name)
        );
    }
    // The deployment that was accepted runs with its own (capped) settings.
    let t = rig.router.table();
    let d = t
        .endpoint("at-ceiling")
        .unwrap()
        .deployment(b"blue")
        .unwrap();
    assert_eq!(d.settings.request_timeout_ms, 600_000);
}
