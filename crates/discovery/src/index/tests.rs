//! Unit tests of the pure index: no sockets, no runtime.

use std::net::SocketAddr;

use infergate_auth::AuthPolicy;
use infergate_config::Defaults;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::*;

/// An InferenceEndpoint created `created` seconds into 2026.
pub(crate) fn mk_ie(ns: &str, name: &str, spec: Value, created: u64) -> DynamicObject {
    let ts = k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + created as i64).unwrap();
    serde_json::from_value(json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {
            "name": name, "namespace": ns, "generation": 1,
            "creationTimestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        },
        "spec": spec,
    }))
    .unwrap()
}

/// One deployment `blue` on Service `svc`, port `http`, no auth.
fn one(svc: &str) -> Value {
    json!({
        "deployments": [{"name": "blue", "serviceName": svc, "port": "http"}],
        "auth": {"mode": "none"},
    })
}

/// An endpoint: (ip, ready, serving, terminating, pod name).
type Ep<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>, &'a str);

pub(crate) fn mk_slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: &[(&str, u16)],
    eps: &[Ep],
) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {
            SERVICE_NAME_LABEL: svc,
            MANAGED_BY_LABEL: "endpointslice-controller.k8s.io",
        }},
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": eps.iter().map(|(ip, r, s, t, pod)| json!({
            "addresses": [ip],
            "conditions": {"ready": r, "serving": s, "terminating": t},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn ready(ip: &str, pod: &'static str) -> Ep<'static> {
    let ip: &'static str = Box::leak(ip.to_string().into_boxed_str());
    (ip, Some(true), Some(true), Some(false), pod)
}

fn mk_index() -> Index {
    Index::new(Defaults::default())
}

fn pods(ix: &Index, ep: &str, dep: &str) -> Vec<SocketAddr> {
    ix.specs()
        .iter()
        .find(|s| s.name == ep)
        .unwrap_or_else(|| panic!("{ep} not routed"))
        .deployments
        .iter()
        .find(|d| d.name == dep)
        .unwrap()
        .pods
        .iter()
        .map(|p| p.addr)
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn cond<'a>(s: &'a InferenceEndpointStatus, t: &str) -> &'a EndpointCondition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

fn status_of(ch: &Changes, ns: &str, name: &str) -> InferenceEndpointStatus {
    ch.statuses
        .iter()
        .find(|u| u.key == ObjectKey::new(ns, name))
        .unwrap_or_else(|| panic!("no status for {ns}/{name}: {:?}", ch.statuses))
        .status
        .clone()
}

#[test]
fn pods_appear_with_names_weights_and_settings() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie(
        "ml",
        "iris",
        json!({
            "traffic": {"blue": 90, "green": 10},
            "deployments": [
                {"name": "blue", "serviceName": "iris-blue", "port": 5001,
                 "requestSettings": {"requestTimeoutMs": 700, "maxConcurrentRequestsPerInstance": 2}},
                {"name": "green", "serviceName": "iris-green", "port": "http", "scoringPath": "/v2/score"},
            ],
            "auth": {"mode": "none"},
        }),
        0,
    ));
    ix.apply_slice(&mk_slice(
        "ml",
        "iris-blue-1",
        "iris-blue",
        &[("http", 5001)],
        &[ready("10.0.0.2", "blue-b"), ready("10.0.0.1", "blue-a")],
    ));
    ix.apply_slice(&mk_slice(
        "ml",
        "iris-green-1",
        "iris-green",
        &[("http", 8080)],
        &[ready("10.0.1.1", "green-a")],
    ));
    let ch = ix.refresh();
    assert!(ch.specs_changed);
    assert!(ch.reports.is_empty(), "{:?}", ch.reports);
    let spec = &ix.specs()[0];
    assert_eq!(spec.name, "iris");
    assert_eq!(spec.auth, AuthPolicy::None);
    let blue = &spec.deployments[0];
    assert_eq!(blue.weight, 90);
    assert_eq!(blue.scoring_path, "/score");
    assert_eq!(blue.settings.request_timeout_ms, 700);
    assert_eq!(blue.settings.max_concurrent_requests_per_instance, 2);
    assert_eq!(
        blue.settings.max_queue_wait_ms,
        Defaults::default().max_queue_wait_ms
    );
    // Sorted by address; the pod name is the targetRef's.
    assert_eq!(
        pods(&ix, "iris", "blue"),
        [addr("10.0.0.1:5001"), addr("10.0.0.2:5001")]
    );
    assert_eq!(blue.pods[0].name.as_deref(), Some("blue-a"));
    let green = &spec.deployments[1];
    assert_eq!(
        (green.weight, green.scoring_path.as_str()),
        (10, "/v2/score")
    );
    assert_eq!(pods(&ix, "iris", "green"), [addr("10.0.1.1:8080")]);

    let st = status_of(&ch, "ml", "iris");
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.deployments[0].ready_pods, 2);
    assert_eq!(cond(&st, "Accepted").status, "True");
    assert_eq!(cond(&st, "Ready").reason, "PodsReady");
}

#[test]
fn conditions_decide_eligibility() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("ml", "e", one("svc"), 0));
    ix.apply_slice(&mk_slice(
        "ml",
        "svc-1",
        "svc",
        &[("http", 80)],
        &[
            ("10.0.0.1", Some(true), Some(true), Some(false), "ready"),
            ("10.0.0.2", None, None, None, "unknown-counts-as-ready"),
            (
                "10.0.0.3",
                Some(false),
                Some(false),
                Some(false),
                "not-ready",
            ),
            ("10.0.0.4", Some(false), Some(true), Some(true), "draining"),
            (
                "10.0.0.5",
                Some(false),
                Some(false),
                Some(true),
                "terminating-not-serving",
            ),
        ],
    ));
    let ch = ix.refresh();
    assert_eq!(
        pods(&ix, "e", "blue"),
        [addr("10.0.0.1:80"), addr("10.0.0.2:80")]
    );
    let st = status_of(&ch, "ml", "e");
    assert_eq!(
        st.deployments[0],
        DeploymentStatus {
            name: "blue".into(),
            ready_pods: 2,
            terminating_pods: 1,
            scale: None,
        }
    );

    // The ready pod turns not ready: out of the pool.
    ix.apply_slice(&mk_slice(
        "ml",
        "svc-1",
        "svc",
        &[("http", 80)],
        &[("10.0.0.1", Some(false), Some(false), Some(false), "ready")],
    ));
    ix.refresh();
    assert!(pods(&ix, "e", "blue").is_empty());
}

#[test]
fn ports_resolve_by_name_number_or_a_lone_port() {
    let slice = |svc: &str, ports: &[(&str, u16)]| {
        mk_slice(
            "ml",
            &format!("{svc}-1"),
            svc,
            ports,
            &[ready("10.0.0.1", "p")],
        )
    };
    let mut ix = mk_index();
    let dep = |name: &str, port: Value| {
        let mut d = json!({"name": name, "serviceName": name});
        if !port.is_null() {
            d["port"] = port;
        }
        d
    };
    ix.apply_endpoint(&mk_ie(
        "ml",
        "e",
        json!({
            "traffic": {"byname": 25, "bynumber": 25, "lone": 25, "ambiguous": 25},
            "deployments": [
                dep("byname", json!("metrics")), dep("bynumber", json!(9000)),
                dep("lone", Value::Null), dep("ambiguous", Value::Null),
            ],
            "auth": {"mode": "none"},
        }),
        0,
    ));
    ix.apply_slice(&slice("byname", &[("http", 80), ("metrics", 9100)]));
    ix.apply_slice(&slice("bynumber", &[("http", 80), ("grpc", 9000)]));
    ix.apply_slice(&slice("lone", &[("", 7000)]));
    ix.apply_slice(&slice("ambiguous", &[("a", 1), ("b", 2)]));
    let ch = ix.refresh();
    assert_eq!(pods(&ix, "e", "byname"), [addr("10.0.0.1:9100")]);
    assert_eq!(pods(&ix, "e", "bynumber"), [addr("10.0.0.1:9000")]);
    assert_eq!(pods(&ix, "e", "lone"), [addr("10.0.0.1:7000")]);
    assert!(pods(&ix, "e", "ambiguous").is_empty());
    let st = status_of(&ch, "ml", "e");
    let r = cond(&st, "Ready");
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", "NoReadyPods")
    );
    assert!(
        r.message.contains("deployment ambiguous") && r.message.contains("name one in `port`"),
        "{}",
        r.message
    );
}

#[test]
fn slices_of_one_service_merge_and_a_pod_in_two_slices_counts_once() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("ml", "e", one("svc"), 0));
    ix.apply_slice(&mk_slice(
        "ml",
        "a",
        "svc",
        &[("http", 80)],
        &[ready("10.0.0.1", "p1")],
    ));
    ix.apply_slice(&mk_slice(
        "ml",
        "b",
        "svc",
        &[("http", 81)],
        &[ready("10.0.0.2", "p2"), ready("10.0.0.1", "p1")],
    ));
    // Same name in another namespace: not ours.
    ix.apply_slice(&mk_slice(
        "other",
        "a",
        "svc",
        &[("http", 80)],
        &[ready("10.9.9.9", "x")],
    ));
    ix.refresh();
    assert_eq!(
        pods(&ix, "e", "blue"),
        [
            addr("10.0.0.1:80"),
            addr("10.0.0.1:81"),
            addr("10.0.0.2:81")
        ]
    );
    ix.delete_slice(&mk_slice("ml", "b", "svc", &[], &[]));
    assert!(ix.refresh().specs_changed);
    assert_eq!(pods(&ix, "e", "blue"), [addr("10.0.0.1:80")]);
}

#[test]
fn a_deleted_service_leaves_the_endpoint_routed_without_pods() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("ml", "e", one("svc"), 0));
    ix.apply_slice(&mk_slice(
        "ml",
        "a",
        "svc",
        &[("http", 80)],
        &[ready("10.0.0.1", "p1")],
    ));
    ix.refresh();
    ix.delete_slice(&mk_slice("ml", "a", "svc", &[], &[]));
    let ch = ix.refresh();
    assert!(
        pods(&ix, "e", "blue").is_empty(),
        "503 NoPodAvailable, not 404"
    );
    let st = status_of(&ch, "ml", "e");
    assert_eq!(st.deployments[0].ready_pods, 0);
    let r = cond(&st, "Ready");
    assert!(
        r.message.contains("Service ml/svc has no EndpointSlices"),
        "{}",
        r.message
    );

    ix.delete_endpoint(&mk_ie("ml", "e", json!({}), 0));
    assert!(ix.refresh().specs_changed);
    assert!(ix.specs().is_empty(), "404 once the endpoint is gone");
}

#[test]
fn the_older_endpoint_keeps_a_duplicate_name_and_the_newer_is_reported() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("team-b", "iris", one("b"), 50));
    ix.apply_endpoint(&mk_ie("team-a", "iris", one("a"), 10));
    ix.apply_slice(&mk_slice(
        "team-a",
        "a",
        "a",
        &[("http", 80)],
        &[ready("10.0.0.1", "pa")],
    ));
    ix.apply_slice(&mk_slice(
        "team-b",
        "b",
        "b",
        &[("http", 80)],
        &[ready("10.0.0.2", "pb")],
    ));
    let ch = ix.refresh();
    assert_eq!(
        pods(&ix, "iris", "blue"),
        [addr("10.0.0.1:80")],
        "team-a is older"
    );
    let st = status_of(&ch, "team-b", "iris");
    let a = cond(&st, "Accepted");
    assert_eq!(
        (a.status.as_str(), a.reason.as_str()),
        ("False", "NameConflict")
    );
    assert!(a.message.contains("team-a/iris"), "{}", a.message);
    assert_eq!(
        cond(&status_of(&ch, "team-a", "iris"), "Accepted").status,
        "True"
    );
    let r: Vec<&Report> = ch.reports.iter().filter(|r| r.is_problem).collect();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].object, "InferenceEndpoint team-b/iris");
    assert!(
        r[0].reason
            .contains("belongs to InferenceEndpoint team-a/iris")
    );

    // Nothing changes: no new report, no status again.
    ix.apply_slice(&mk_slice(
        "team-b",
        "b",
        "b",
        &[("http", 80)],
        &[ready("10.0.0.3", "pb2")],
    ));
    let ch = ix.refresh();
    assert!(ch.reports.is_empty(), "{:?}", ch.reports);
    assert!(!ch.specs_changed, "the loser's pods are not routed");

    // The owner goes away: the other takes the URL over.
    ix.delete_endpoint(&mk_ie("team-a", "iris", json!({}), 10));
    let ch = ix.refresh();
    assert_eq!(pods(&ix, "iris", "blue"), [addr("10.0.0.3:80")]);
    assert!(
        ch.reports
            .iter()
            .any(|r| !r.is_problem && r.object == "InferenceEndpoint team-b/iris")
    );
    assert_eq!(
        cond(&status_of(&ch, "team-b", "iris"), "Accepted").status,
        "True"
    );
}

#[test]
fn malformed_endpoints_are_skipped_with_the_key_and_reason_and_others_stay() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("ml", "good", one("svc"), 0));
    let bad = [
        (
            "sum90",
            json!({"traffic": {"a": 70, "b": 20}, "deployments": [
                {"name": "a", "serviceName": "s"}, {"name": "b", "serviceName": "s"}]}),
            "spec.traffic",
            "weights sum to 90",
        ),
        (
            "negative",
            json!({"traffic": {"a": -5}, "deployments": [{"name": "a", "serviceName": "s"}]}),
            "spec",
            "does not match the InferenceEndpoint schema",
        ),
        (
            "noservice",
            json!({"deployments": [{"name": "a"}]}),
            "spec",
            "missing field `serviceName`",
        ),
        (
            "badservice",
            json!({"deployments": [{"name": "a", "serviceName": "Not_A_Service"}]}),
            "spec.deployments[0].serviceName",
            "not a Service name",
        ),
        (
            "badport",
            json!({"deployments": [{"name": "a", "serviceName": "s", "port": 70000}]}),
            "spec.deployments[0].port",
            "not a port number",
        ),
        (
            "typo",
            json!({"deployments": [{"name": "a", "serviceName": "s", "requestSettings": {"requestTimeoutMS": 5}}]}),
            "spec.deployments[0].requestSettings.requestTimeoutMS",
            "not a request setting",
        ),
        (
            "too-long",
            json!({"deployments": [{"name": "a", "serviceName": "s", "requestSettings": {"requestTimeoutMs": u64::MAX}}]}),
            "spec.deployments[0].requestSettings.requestTimeoutMs",
            "above the router's ceiling of 600000",
        ),
        (
            "not-a-u32",
            json!({"deployments": [{"name": "a", "serviceName": "s"}, {"name": "b", "serviceName": "s", "requestSettings": {"maxQueueLength": 4294967296u64}}]}),
            "spec.deployments[1].requestSettings.maxQueueLength",
            "not a whole number",
        ),
        (
            "quoted",
            json!({"deployments": [{"name": "a", "serviceName": "s", "requestSettings": {"ejectionMaxMs": "10"}}]}),
            "spec.deployments[0].requestSettings.ejectionMaxMs",
            "not a whole number",
        ),
        (
            "unknown-traffic",
            json!({"traffic": {"green": 100}, "deployments": [{"name": "a", "serviceName": "s"}]}),
            "spec.traffic.green",
            "no deployment of this endpoint has that name",
        ),
        (
            "badauth",
            json!({"deployments": [{"name": "a", "serviceName": "s"}], "auth": {"mode": "keys"}}),
            "spec.auth.mode",
            "unknown authentication mode",
        ),
        (
            "badprotocol",
            json!({"deployments": [{"name": "a", "serviceName": "s", "protocol": "http2"}]}),
            "spec.deployments[0].protocol",
            "use one of http1, h2c, h2",
        ),
        (
            "h2-without-ca",
            json!({"deployments": [{"name": "a", "serviceName": "s", "protocol": "h2"}]}),
            "spec.deployments[0].upstreamTls",
            "no CA is given",
        ),
        (
            "h2-unreadable-ca",
            json!({"deployments": [{"name": "a", "serviceName": "s", "protocol": "h2",
                "upstreamTls": {"caPemFile": "/nonexistent/ca.pem"}}]}),
            "spec.deployments[0].upstreamTls.caPemFile",
            "cannot read the file",
        ),
        (
            "tls-without-h2",
            json!({"deployments": [{"name": "a", "serviceName": "s", "protocol": "h2c",
                "upstreamTls": {"caPemFile": "/nonexistent/ca.pem"}}]}),
            "spec.deployments[0].upstreamTls",
            "applies only to protocol h2",
        ),
    ];
    for (name, spec, _, _) in &bad {
        ix.apply_endpoint(&mk_ie("ml", name, spec.clone(), 1));
    }
    let ch = ix.refresh();
    assert_eq!(ix.specs().len(), 1, "only `good` is routed");
    assert_eq!(ix.specs()[0].name, "good");
    for (name, _, key, why) in &bad {
        let r = ch
            .reports
            .iter()
            .find(|r| r.object == format!("InferenceEndpoint ml/{name}"))
            .unwrap_or_else(|| panic!("no report for {name}: {:?}", ch.reports));
        assert!(r.is_problem);
        assert!(
            r.reason.contains(&format!("{key}:")) && r.reason.contains(why),
            "{name}: {}",
            r.reason
        );
        let st = status_of(&ch, "ml", name);
        let a = cond(&st, "Accepted");
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("False", "Invalid"),
            "{name}"
        );
    }
    // Fixing one routes it and says so.
    ix.apply_endpoint(&mk_ie("ml", "sum90", json!({"traffic": {"a": 80, "b": 20}, "deployments": [
        {"name": "a", "serviceName": "s"}, {"name": "b", "serviceName": "s"}], "auth": {"mode": "none"}}), 1));
    let ch = ix.refresh();
    assert_eq!(ix.specs().len(), 2);
    assert!(
        ch.reports
            .iter()
            .any(|r| !r.is_problem && r.object.ends_with("ml/sum90"))
    );
}

#[test]
fn a_relist_replaces_its_scope_only() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("a", "one", one("svc"), 0));
    ix.apply_endpoint(&mk_ie("a", "two", one("svc"), 0));
    ix.apply_endpoint(&mk_ie("b", "three", one("svc"), 0));
    ix.apply_slice(&mk_slice(
        "a",
        "s1",
        "svc",
        &[("http", 80)],
        &[ready("10.0.0.1", "p")],
    ));
    ix.apply_slice(&mk_slice(
        "b",
        "s1",
        "svc",
        &[("http", 80)],
        &[ready("10.0.0.2", "p")],
    ));
    ix.refresh();
    // Namespace a relisted: `two` and its slice were deleted while the watch was down.
    ix.reset_endpoints(Some("a"), &[mk_ie("a", "one", one("svc"), 0)]);
    ix.reset_slices(Some("a"), &[]);
    assert!(ix.refresh().specs_changed);
    let names: Vec<&str> = ix.specs().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one", "three"]);
    assert!(pods(&ix, "one", "blue").is_empty());
    assert_eq!(pods(&ix, "three", "blue"), [addr("10.0.0.2:80")]);
    // A cluster-wide relist replaces everything.
    ix.reset_endpoints(None, &[]);
    ix.refresh();
    assert!(ix.specs().is_empty());
}

#[test]
fn status_only_changes_rebuild_nothing_and_a_shown_status_is_not_sent_again() {
    let mut ix = mk_index();
    let ie = mk_ie("ml", "e", one("svc"), 0);
    ix.apply_endpoint(&ie);
    ix.apply_slice(&mk_slice(
        "ml",
        "s",
        "svc",
        &[("http", 80)],
        &[ready("10.0.0.1", "p")],
    ));
    let ch = ix.refresh();
    let want = status_of(&ch, "ml", "e");
    // Our write comes back through the watch (with transition times).
    let mut written = ie.clone();
    written.data["status"] = serde_json::to_value(crate::status::with_times(
        &want,
        None,
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap();
    ix.apply_endpoint(&written);
    let ch = ix.refresh();
    assert!(!ch.specs_changed);
    assert!(ch.statuses.is_empty(), "{:?}", ch.statuses);
    // The same desired status is not handed out twice while the write is on its way.
    ix.apply_slice(&mk_slice(
        "ml",
        "s",
        "svc",
        &[("http", 80)],
        &[ready("10.0.0.9", "q")],
    ));
    let ch = ix.refresh();
    assert!(ch.specs_changed);
    assert!(ch.statuses.is_empty(), "same counts: {:?}", ch.statuses);
}

#[test]
fn auth_reference_is_kept_for_the_secret_watch_and_fails_closed() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie(
        "ml",
        "keyed",
        json!({"deployments": [{"name": "a", "serviceName": "s"}],
               "auth": {"mode": "key", "secretName": "keyed-keys", "future": 1}}),
        0,
    ));
    ix.apply_endpoint(&mk_ie(
        "ml",
        "default",
        json!({"deployments": [{"name": "a", "serviceName": "s"}]}),
        0,
    ));
    ix.refresh();
    let (key, auth) = ix.auth_ref("keyed").unwrap();
    assert_eq!(key, &ObjectKey::new("ml", "keyed"));
    assert_eq!(auth.unwrap().secret_name.as_deref(), Some("keyed-keys"));
    assert!(ix.auth_ref("default").unwrap().1.is_none());
    for s in ix.specs() {
        assert_eq!(
            s.auth,
            AuthPolicy::default(),
            "{}: refuses until its Secret is listed",
            s.name
        );
    }
}

/// Endpoint keys of the Secret tests (at least 16 bytes, as keys must be).
const P1: &str = "p1-0123456789abcdef";
const S1: &str = "s1-0123456789abcdef";
const P2: &str = "p2-0123456789abcdef";

/// A Secret with these entries (values as given; the API carries them base64-encoded).
pub(crate) fn mk_secret(ns: &str, name: &str, entries: &[(&str, &str)]) -> Secret {
    use k8s_openapi::ByteString;
    let mut s = Secret::default();
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    s.metadata.labels = Some([(AUTH_SECRET_LABEL.to_string(), "true".to_string())].into());
    s.data = Some(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    s
}

fn auth_of<'a>(ix: &'a Index, ep: &str) -> &'a AuthPolicy {
    &ix.specs().iter().find(|s| s.name == ep).unwrap().auth
}

const SIGNING: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn secrets_give_the_keys_and_missing_or_incomplete_ones_fail_closed() {
    let mut ix = mk_index();
    let ep = |name: &str, auth: Value| {
        mk_ie(
            "ml",
            name,
            json!({"deployments": [{"name": "a", "serviceName": "s"}], "auth": auth}),
            0,
        )
    };
    ix.apply_endpoint(&ep("k", json!({"mode": "key", "secretName": "k-keys"})));
    ix.apply_endpoint(&ep("t", json!({"mode": "token", "secretName": "t-keys"})));
    ix.apply_endpoint(&ep("d", json!({"secretName": "k-keys"})));
    ix.apply_endpoint(&ep("nosecret", json!({"mode": "key"})));
    ix.apply_endpoint(&ep("open", json!({"mode": "none", "secretName": "k-keys"})));
    // Secrets not listed yet: every keyed endpoint refuses, with the reason in status and log.
    let ch = ix.refresh();
    for e in ["k", "t", "d", "nosecret"] {
        assert_eq!(auth_of(&ix, e), &AuthPolicy::default(), "{e}");
        let st = status_of(&ch, "ml", e);
        let c = cond(&st, "Ready");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "AuthNotConfigured"),
            "{e}"
        );
        assert!(
            ch.reports
                .iter()
                .any(|r| r.object == format!("InferenceEndpoint ml/{e}")
                    && r.is_problem
                    && r.reason.contains("refused (401)")),
            "{e}: {:?}",
            ch.reports
        );
    }
    assert!(
        cond(&status_of(&ch, "ml", "k"), "Ready")
            .message
            .contains("Secret ml/k-keys (spec.auth.secretName) not found")
    );
    assert!(
        cond(&status_of(&ch, "ml", "nosecret"), "Ready")
            .message
            .contains("secretName is not set")
    );
    assert_eq!(auth_of(&ix, "open"), &AuthPolicy::None);

    // The Secrets arrive (an unrelated one too: only auth entries are kept, never printed).
    ix.reset_secrets(
        Some("ml"),
        &[
            mk_secret(
                "ml",
                "k-keys",
                &[("primaryKey", P1), ("secondaryKey", S1), ("tls.key", "x")],
            ),
            mk_secret("ml", "t-keys", &[("signingKey", SIGNING)]),
            mk_secret("ml", "other", &[("password", "hunter2")]),
        ],
    );
    assert!(ix.is_dirty());
    let ch = ix.refresh();
    let keys = AuthPolicy::keys(Some(P1.as_bytes()), Some(S1.as_bytes())).unwrap();
    assert_eq!(auth_of(&ix, "k"), &keys);
    assert_eq!(auth_of(&ix, "d"), &keys, "mode defaults to key");
    assert_eq!(
        auth_of(&ix, "t"),
        &AuthPolicy::token(SIGNING.as_bytes()).unwrap()
    );
    assert_eq!(auth_of(&ix, "nosecret"), &AuthPolicy::default());
    assert!(
        ch.reports
            .iter()
            .any(|r| r.object == "InferenceEndpoint ml/k" && !r.is_problem)
    );
    let dbg = format!("{ix:?}");
    for secret in [P1, S1, SIGNING, "hunter2", "\"x\""] {
        assert!(!dbg.contains(secret), "Debug prints {secret}");
    }
    assert!(
        !dbg.contains("tls.key") && !dbg.contains("password"),
        "only auth entries kept"
    );

    // Rotation: the new key replaces the old at once; an unrelated Secret changes nothing.
    ix.apply_secret(&mk_secret("ml", "other", &[("password", "new")]));
    assert!(!ix.is_dirty());
    ix.apply_secret(&mk_secret(
        "ml",
        "k-keys",
        &[("primaryKey", P2), ("secondaryKey", S1)],
    ));
    ix.refresh();
    assert_eq!(
        auth_of(&ix, "k"),
        &AuthPolicy::keys(Some(P2.as_bytes()), Some(S1.as_bytes())).unwrap()
    );

    // A Secret without the needed entries, a short signing key, a deleted Secret: refuse all.
    ix.apply_secret(&mk_secret("ml", "k-keys", &[("primaryKey", "  ")]));
    ix.apply_secret(&mk_secret("ml", "t-keys", &[("signingKey", "short")]));
    let ch = ix.refresh();
    assert_eq!(auth_of(&ix, "k"), &AuthPolicy::default());
    assert_eq!(auth_of(&ix, "t"), &AuthPolicy::default());
    let msg = cond(&status_of(&ch, "ml", "k"), "Ready").message.clone();
    assert!(
        msg.contains("Secret ml/k-keys has no `primaryKey` or `secondaryKey`"),
        "{msg}"
    );
    let msg = cond(&status_of(&ch, "ml", "t"), "Ready").message.clone();
    assert!(
        msg.contains("Secret ml/t-keys") && msg.contains("signing key is 5 bytes"),
        "{msg}"
    );
    // A key shorter than 16 bytes in the Secret: refused, the entry named (never its value).
    ix.apply_secret(&mk_secret(
        "ml",
        "k-keys",
        &[("primaryKey", P1), ("secondaryKey", "tiny-key")],
    ));
    let ch = ix.refresh();
    assert_eq!(auth_of(&ix, "k"), &AuthPolicy::default());
    let c = cond(&status_of(&ch, "ml", "k"), "Ready").clone();
    assert_eq!(c.reason, "AuthNotConfigured");
    assert!(
        c.message.contains("Secret ml/k-keys")
            && c.message.contains("`secondaryKey` key is 8 bytes")
            && !c.message.contains("tiny-key"),
        "{}",
        c.message
    );
    ix.apply_secret(&mk_secret("ml", "t-keys", &[("signingKey", SIGNING)]));
    ix.refresh();
    assert!(matches!(auth_of(&ix, "t"), AuthPolicy::Token { .. }));
    ix.delete_secret(&mk_secret("ml", "t-keys", &[]));
    let ch = ix.refresh();
    assert_eq!(auth_of(&ix, "t"), &AuthPolicy::default());
    assert!(
        cond(&status_of(&ch, "ml", "t"), "Ready")
            .message
            .contains("not found")
    );

    // A relist without the Secret removes it too; switching the endpoint to mode none opens it.
    ix.reset_secrets(Some("ml"), &[]);
    ix.refresh();
    assert_eq!(auth_of(&ix, "d"), &AuthPolicy::default());
    ix.apply_endpoint(&ep("d", json!({"mode": "none"})));
    ix.refresh();
    assert_eq!(auth_of(&ix, "d"), &AuthPolicy::None);
}

#[test]
fn one_slice_change_among_many_rebuilds_one_endpoint() {
    let mut ix = mk_index();
    for i in 0..50 {
        ix.apply_endpoint(&mk_ie("ml", &format!("e{i:02}"), one(&format!("s{i}")), i));
        ix.apply_slice(&mk_slice(
            "ml",
            &format!("s{i}"),
            &format!("s{i}"),
            &[("http", 80)],
            &[ready(&format!("10.0.{i}.1"), "p")],
        ));
    }
    ix.refresh();
    let before = ix.specs().to_vec();
    ix.apply_slice(&mk_slice(
        "ml",
        "s7",
        "s7",
        &[("http", 80)],
        &[ready("10.9.9.9", "p")],
    ));
    assert!(ix.is_dirty());
    let ch = ix.refresh();
    assert!(ch.specs_changed);
    assert_eq!(ch.statuses.len(), 0, "one ready pod before and after");
    let changed: Vec<&str> = ix
        .specs()
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.name.as_str())
        .collect();
    assert_eq!(changed, ["e07"]);
    assert!(!ix.is_dirty());
}

#[test]
fn scale_settings_reach_the_spec_and_bad_ones_are_reported_without_touching_routing() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie(
        "ml",
        "iris",
        json!({
            "traffic": {"blue": 50, "green": 50},
            "deployments": [
                {"name": "blue", "serviceName": "iris-blue", "port": "http",
                 "scaleSettings": {"scaleTargetRef": {"name": "iris-blue"}, "minInstances": 0, "maxInstances": 4}},
                {"name": "green", "serviceName": "iris-green", "port": "http",
                 "scaleSettings": {"scaleTargetRef": {"name": "iris-green"}, "minInstances": 5, "maxInstances": 2}},
            ],
            "auth": {"mode": "none"},
        }),
        0,
    ));
    for svc in ["iris-blue", "iris-green"] {
        ix.apply_slice(&mk_slice(
            "ml",
            &format!("{svc}-1"),
            svc,
            &[("http", 5001)],
            &[ready("10.0.0.1", "p")],
        ));
    }
    let ch = ix.refresh();
    let spec = &ix.specs()[0];
    let blue = spec.deployments[0]
        .autoscale
        .as_ref()
        .expect("blue autoscaled");
    assert_eq!(blue.namespace.as_deref(), Some("ml"));
    assert_eq!(
        (blue.settings.min_instances, blue.settings.max_instances),
        (0, 4)
    );
    assert_eq!(
        blue.settings.scale_target_ref.as_ref().unwrap().kind,
        "Deployment"
    );
    // green: not autoscaled, still routed
    assert!(spec.deployments[1].autoscale.is_none());
    assert_eq!(pods(&ix, "iris", "green"), [addr("10.0.0.1:5001")]);
    let st = status_of(&ch, "ml", "iris");
    assert_eq!(cond(&st, "Accepted").status, "True");
    assert_eq!(cond(&st, "Ready").status, "True");
    let scaling = cond(&st, "Scaling");
    assert_eq!(
        (scaling.status.as_str(), scaling.reason.as_str()),
        ("False", "InvalidScaleSettings")
    );
    assert!(
        scaling
            .message
            .contains("spec.deployments[1].scaleSettings.minInstances")
            && scaling.message.contains("fix"),
        "{}",
        scaling.message
    );

    // A missing target and an unknown key are reported the same way.
    ix.apply_endpoint(&mk_ie(
        "ml",
        "iris",
        json!({
            "deployments": [
                {"name": "blue", "serviceName": "iris-blue", "port": "http",
                 "scaleSettings": {"maxInstance": 3}},
            ],
            "auth": {"mode": "none"},
        }),
        0,
    ));
    let ch = ix.refresh();
    let st = status_of(&ch, "ml", "iris");
    let m = &cond(&st, "Scaling").message;
    assert!(m.contains("maxInstance"), "{m}");
    assert_eq!(pods(&ix, "iris", "blue"), [addr("10.0.0.1:5001")]);
}

// === trust: EndpointSlices and Secrets ===

/// An EndpointSlice of Service `svc` with these labels besides the service name, port `http`
/// 80, and these endpoints (raw JSON).
fn raw_slice(ns: &str, name: &str, svc: &str, labels: Value, endpoints: Value) -> EndpointSlice {
    let mut l = labels;
    l[SERVICE_NAME_LABEL] = json!(svc);
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": l},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn controller() -> Value {
    json!({MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"})
}

fn pod_ep(ip: &str, ns: &str, pod: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true},
           "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})
}

fn routed_pods(ix: &Index, ep: &str) -> Vec<SocketAddr> {
    ix.specs()
        .iter()
        .find(|s| s.name == ep)
        .map(|s| s.deployments[0].pods.iter().map(|p| p.addr).collect())
        .unwrap_or_default()
}

#[test]
fn slices_without_a_trusted_manager_are_refused_with_a_reason() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("ml", "e", one("svc"), 0));
    // Hand-made (no managed-by label), pointing at some address in the cluster.
    ix.apply_slice(&raw_slice(
        "ml",
        "svc-hand",
        "svc",
        json!({}),
        json!([pod_ep("10.96.0.1", "ml", "p")]),
    ));
    let ch = ix.refresh();
    assert!(routed_pods(&ix, "e").is_empty());
    let st = status_of(&ch, "ml", "e");
    let ready = cond(&st, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "UntrustedEndpoints")
    );
    assert!(
        ready.message.contains("no trusted ready endpoints"),
        "{}",
        ready.message
    );
    let t = cond(&st, ENDPOINTS_TRUSTED);
    assert_eq!(
        (t.status.as_str(), t.reason.as_str()),
        ("False", "UntrustedEndpoints")
    );
    assert!(
        t.message.contains("EndpointSlice ml/svc-hand has no label") && t.message.contains("fix:"),
        "{}",
        t.message
    );
    assert!(
        ch.reports
            .iter()
            .any(|r| r.object == "EndpointSlice ml/svc-hand" && r.is_problem),
        "{:?}",
        ch.reports
    );
    // Another manager: refused too, naming it and the config key that would trust it.
    ix.apply_slice(&raw_slice(
        "ml",
        "svc-hand",
        "svc",
        json!({MANAGED_BY_LABEL: "my-operator"}),
        json!([pod_ep("10.96.0.1", "ml", "p")]),
    ));
    let ch = ix.refresh();
    assert!(routed_pods(&ix, "e").is_empty());
    let t = cond(&status_of(&ch, "ml", "e"), ENDPOINTS_TRUSTED).clone();
    assert!(
        t.message.contains("managed by `my-operator`")
            && t.message.contains("discovery.kube.endpointSliceManagers"),
        "{}",
        t.message
    );
    // The controller's slice: routed, and the condition is gone.
    ix.apply_slice(&raw_slice(
        "ml",
        "svc-hand",
        "svc",
        controller(),
        json!([pod_ep("10.0.0.7", "ml", "p")]),
    ));
    let ch = ix.refresh();
    assert_eq!(routed_pods(&ix, "e"), [addr("10.0.0.7:80")]);
    let st = status_of(&ch, "ml", "e");
    assert_eq!(cond(&st, "Ready").reason, "PodsReady");
    assert!(st.conditions.iter().all(|c| c.type_ != ENDPOINTS_TRUSTED));
}

#[test]
fn an_allowlisted_manager_is_trusted() {
    let mut ix = mk_index();
    ix.set_slice_managers(vec![
        "endpointslice-controller.k8s.io".into(),
        "my-operator".into(),
    ]);
    ix.apply_endpoint(&mk_ie("ml", "e", one("svc"), 0));
    ix.apply_slice(&raw_slice(
        "ml",
        "svc-op",
        "svc",
        json!({MANAGED_BY_LABEL: "my-operator"}),
        json!([pod_ep("10.0.0.8", "ml", "p")]),
    ));
    ix.refresh();
    assert_eq!(routed_pods(&ix, "e"), [addr("10.0.0.8:80")]);
}

#[test]
fn endpoints_that_are_not_pods_of_the_namespace_are_refused() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie("ml", "e", one("svc"), 0));
    ix.apply_slice(&raw_slice(
        "ml",
        "svc-1",
        "svc",
        controller(),
        json!([
            pod_ep("10.0.0.1", "ml", "good"),
            {"addresses": ["10.240.0.4"], "conditions": {"ready": true}},
            {"addresses": ["10.240.0.5"], "conditions": {"ready": true},
             "targetRef": {"kind": "Node", "name": "node-1"}},
            pod_ep("10.0.9.9", "other-team", "their-pod"),
            {"addresses": ["10.0.0.2"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "namespace": "ml"}},
        ]),
    ));
    let ch = ix.refresh();
    assert_eq!(routed_pods(&ix, "e"), [addr("10.0.0.1:80")]);
    let st = status_of(&ch, "ml", "e");
    // Served by the good pod, and the refusals are shown.
    assert_eq!(cond(&st, "Ready").reason, "PodsReady");
    let m = &cond(&st, ENDPOINTS_TRUSTED).message;
    for want in [
        "endpoint 10.240.0.4 has no targetRef",
        "endpoint 10.240.0.5 has targetRef kind `Node`",
        "endpoint 10.0.9.9 has targetRef Pod other-team/their-pod in another namespace",
        "endpoint 10.0.0.2 has a targetRef without a name",
    ] {
        assert!(m.contains(want), "{want}: {m}");
    }
    assert_eq!(st.deployments[0].ready_pods, 1);
}

#[test]
fn unlabelled_secrets_count_as_absent() {
    let mut ix = mk_index();
    ix.apply_endpoint(&mk_ie(
        "ml",
        "k",
        json!({"deployments": [{"name": "a", "serviceName": "s"}],
               "auth": {"mode": "key", "secretName": "k-keys"}}),
        0,
    ));
    let mut unlabelled = mk_secret("ml", "k-keys", &[("primaryKey", P1)]);
    unlabelled.metadata.labels = None;
    ix.apply_secret(&unlabelled);
    let ch = ix.refresh();
    assert_eq!(auth_of(&ix, "k"), &AuthPolicy::default());
    let st = status_of(&ch, "ml", "k");
    let m = &cond(&st, "Ready").message;
    assert!(
        m.contains("infergate.io/auth=true")
            && m.contains("kubectl -n ml label secret k-keys infergate.io/auth=true"),
        "{m}"
    );
    // Labelled: used. The label removed again: forgotten.
    ix.apply_secret(&mk_secret("ml", "k-keys", &[("primaryKey", P1)]));
    ix.refresh();
    assert_eq!(
        auth_of(&ix, "k"),
        &AuthPolicy::keys(Some(P1.as_bytes()), None).unwrap()
    );
    ix.apply_secret(&unlabelled);
    ix.refresh();
    assert_eq!(auth_of(&ix, "k"), &AuthPolicy::default());
}

// === property tests (fuzzing; `PROPTEST_CASES=100000 cargo test -p infergate-discovery fuzz`) ===

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Any JSON value (small), for the fields a tenant may fill with anything.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn setting_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            8 => (1u64..100).prop_map(Value::from),
            4 => (0u64..2_000_000).prop_map(Value::from),
            1 => Just(json!(u64::MAX)),
            1 => Just(json!(u32::MAX)),
            1 => Just(json!(1.8446744073709552e19)),
            1 => Just(json!(-1)),
            1 => Just(json!("10")),
            1 => any::<u64>().prop_map(Value::from),
        ]
    }

    fn request_settings() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("requestTimeoutMs"),
            Just("maxConcurrentRequestsPerInstance"),
            Just("maxQueueWaitMs"),
            Just("maxRequestBodyBytes"),
            Just("maxQueueLength"),
            Just("ejectionMaxMs"),
            Just("ejectionBaseMs"),
            Just("retryBudgetPercent"),
            Just("requestTimeoutMS"),
        ];
        proptest::collection::btree_map(key, setting_value(), 0..4).prop_map(|m| json!(m))
    }

    fn deployment() -> impl Strategy<Value = Value> {
        (
            prop_oneof![4 => Just(json!("blue")), 4 => Just(json!("green")), 1 => any_json()],
            prop_oneof![24 => Just(json!("svc")), 1 => Just(json!("Not_A_Service")), 1 => any_json()],
            prop_oneof![24 => Just(json!("http")), 1 => Just(json!(70000)), 1 => any_json()],
            prop_oneof![24 => request_settings(), 1 => any_json()],
            prop_oneof![24 => Just(json!("/score")), 1 => Just(json!("no-slash")), 1 => any_json()],
        )
            .prop_map(|(name, svc, port, settings, path)| {
                json!({"name": name, "serviceName": svc, "port": port,
                       "requestSettings": settings, "scoringPath": path})
            })
    }

    /// Specs near the schema (most of them), and any JSON at all.
    fn spec() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => (
                prop_oneof![
                    8 => proptest::collection::vec(deployment(), 1..2),
                    2 => proptest::collection::vec(deployment(), 0..4),
                ],
                prop_oneof![12 => Just(json!({})), 2 => Just(json!({"blue": 100})), 1 => any_json()],
                prop_oneof![12 => Just(json!({"mode": "none"})), 1 => Just(json!({"mode": "keys"})), 1 => any_json()],
                prop_oneof![12 => Just(json!(true)), 1 => any_json()],
            )
                .prop_map(|(deps, traffic, auth, pass)| json!({
                    "deployments": deps, "traffic": traffic, "auth": auth,
                    "passAuthorization": pass,
                })),
            1 => any_json(),
        ]
    }

    proptest! {
        // 256 cases by default (as `./test.sh` runs them); PROPTEST_CASES sets more.
        #[test]
        fn any_inference_endpoint_is_routed_within_the_ceilings_or_refused_naming_a_key(
            spec in spec(),
            name in prop_oneof![4 => Just("iris".to_string()), 1 => "\\PC{0,70}"],
        ) {
            let mut ix = mk_index();
            ix.apply_endpoint(&mk_ie("ml", &name, spec.clone(), 1));
            let ch = ix.refresh();
            let ceilings = RequestSettingsCeilings::default().entries();
            match ix.specs().first() {
                Some(s) => {
                    for d in &s.deployments {
                        let values = d.settings.entries();
                        for ((k, v), (_, max)) in values.iter().zip(&ceilings) {
                            prop_assert!(v <= max, "{k} = {v} > {max}: {spec}");
                        }
                    }
                }
                None => {
                    let Some(u) = ch.statuses.iter().find(|u| u.key.name == name) else {
                        // A name no object can have (not stored): nothing to report on.
                        return Ok(());
                    };
                    let a = cond(&u.status, "Accepted");
                    prop_assert_eq!(a.status.as_str(), "False");
                    prop_assert!(
                        a.message.contains("spec") || a.message.contains("metadata.name"),
                        "{}: {spec}", a.message
                    );
                    prop_assert!(a.message.contains("fix:"), "{}", a.message);
                }
            }
        }
    }
}

#[test]
fn a_deployments_protocol_and_its_ca_reach_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut ix = mk_index();
    let spec = json!({"auth": {"mode": "none"}, "traffic": {"a": 50, "b": 50, "c": 0}, "deployments": [
        {"name": "a", "serviceName": "s", "protocol": "h2c"},
        {"name": "b", "serviceName": "s", "protocol": "h2",
         "upstreamTls": {"caPemFile": ca.display().to_string(), "serverName": "model.ml.svc"}},
        {"name": "c", "serviceName": "s"}]});
    ix.apply_endpoint(&mk_ie("ml", "grpc", spec, 0));
    ix.refresh();
    let specs = ix.specs();
    let t: Vec<&PodTransport> = specs[0].deployments.iter().map(|d| &d.transport).collect();
    assert_eq!(t[0].protocol, UpstreamProtocol::H2c);
    assert!(t[0].tls.is_none());
    assert_eq!(t[1].protocol, UpstreamProtocol::H2);
    let tls = t[1].tls.as_ref().unwrap();
    assert_eq!(tls.ca_certs.len(), 1);
    assert_eq!(tls.server_name.as_deref(), Some("model.ml.svc"));
    assert_eq!(*t[2], PodTransport::HTTP1);
}
