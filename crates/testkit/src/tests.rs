//! The fake API server over raw HTTP/1.1: paging, watch lines, selectors, 410, status patches, outages.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::*;

fn mk_slice(ns: &str, name: &str, svc: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [],
    })
}

async fn send(
    server: &FakeApiServer,
    method: &str,
    path_and_query: &str,
    body: Option<(&str, Value)>,
) -> hyper::Response<Incoming> {
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    let mut b = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "fake");
    let bytes = match body {
        Some((ct, v)) => {
            b = b.header("content-type", ct);
            Bytes::from(serde_json::to_vec(&v).unwrap())
        }
        None => Bytes::new(),
    };
    s.send_request(b.body(Full::new(bytes)).unwrap())
        .await
        .unwrap()
}

async fn get_json(server: &FakeApiServer, pq: &str) -> (u16, Value) {
    let r = send(server, "GET", pq, None).await;
    let code = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&b).unwrap())
}

/// Reads watch lines until `n` have arrived (or 5 s pass).
async fn lines(body: &mut Incoming, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < n {
        let f = tokio::time::timeout_at(end, body.frame())
            .await
            .expect("watch lines in time");
        let Some(f) = f else { break };
        if let Ok(d) = f.unwrap().into_data() {
            buf.extend_from_slice(&d);
        }
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
    }
    out
}

#[test]
fn selectors_parse_and_match() {
    let o = json!({"metadata": {"labels": {"a": "1", "b": "x"}}});
    for (s, want) in [
        ("", true),
        ("a", true),
        ("!a", false),
        ("c", false),
        ("!c", true),
        ("a=1", true),
        ("a==1", true),
        ("a!=1", false),
        ("a in (1,2)", true),
        ("a notin (1,2)", false),
        ("b in (y, z)", false),
        ("a=1,b=x", true),
        ("a=1,b=y", false),
    ] {
        assert_eq!(Selector::parse(s).unwrap().matches(&o), want, "{s}");
    }
    assert!(Selector::parse("a in (1").is_err());
}

#[test]
fn field_selectors_on_name_and_namespace_match_and_others_are_refused() {
    let o = json!({"metadata": {"name": "n1", "namespace": "ns", "labels": {"a": "1"}}});
    for (l, f, want) in [
        ("", "metadata.name=n1", true),
        ("", "metadata.name==n2", false),
        ("", "metadata.name!=n2", true),
        ("", "metadata.namespace=ns,metadata.name=n1", true),
        ("a=1", "metadata.name=n1", true),
        ("a=2", "metadata.name=n1", false),
        ("a=1", "metadata.namespace!=ns", false),
    ] {
        assert_eq!(
            Selector::parse_with_fields(l, f).unwrap().matches(&o),
            want,
            "{l} / {f}"
        );
    }
    let e = Selector::parse_with_fields("", "type=kubernetes.io/tls").unwrap_err();
    assert!(e.contains("field label not supported"), "{e}");
}

#[tokio::test]
async fn list_honours_field_selectors_and_refuses_unsupported_fields() {
    let server = FakeApiServer::start().await;
    server.apply(mk_slice("ns", "s1", "svc"));
    server.apply(mk_slice("ns", "s2", "svc"));
    let (code, list) = get_json(
        &server,
        "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices?fieldSelector=metadata.name%3Ds2",
    )
    .await;
    assert_eq!(code, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s2"]);
    // An unsupported field: 400, as from the API server, never a silently unfiltered list.
    let (code, status) = get_json(
        &server,
        "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices?fieldSelector=addressType%3DIPv4",
    )
    .await;
    assert_eq!(code, 400, "{status}");
}

#[test]
fn rfc3339_formats_the_epoch_and_a_leap_day() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}

#[tokio::test]
async fn list_pages_with_limit_and_continue_at_one_version() {
    let s = FakeApiServer::start().await;
    for i in 0..5 {
        s.apply(mk_slice("ns", &format!("s{i}"), "svc"));
    }
    s.apply(mk_slice("other", "x", "svc"));
    let path = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices";
    let (code, page1) = get_json(&s, &format!("{path}?limit=2")).await;
    assert_eq!(code, 200);
    assert_eq!(page1["kind"], "EndpointSliceList");
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let rv = page1["metadata"]["resourceVersion"].clone();
    let mut names = vec![];
    let mut page = page1;
    loop {
        for it in page["items"].as_array().unwrap() {
            names.push(it["metadata"]["name"].as_str().unwrap().to_string());
        }
        assert_eq!(page["metadata"]["resourceVersion"], rv);
        let Some(c) = page["metadata"]["continue"].as_str() else {
            break;
        };
        // A change between pages does not move the list's version.
        s.apply(mk_slice("ns", "zz-late", "svc"));
        let c = c.replace('|', "%7C").replace('/', "%2F");
        page = get_json(&s, &format!("{path}?limit=2&continue={c}"))
            .await
            .1;
    }
    assert_eq!(&names[..5], ["s0", "s1", "s2", "s3", "s4"]);
    let (_, all) = get_json(&s, "/apis/discovery.k8s.io/v1/endpointslices").await;
    assert!(all["items"].as_array().unwrap().len() >= 6);
}

#[tokio::test]
async fn watch_replays_from_a_version_then_streams_live_lines() {
    let s = FakeApiServer::start().await;
    let a = s.apply(mk_slice("ns", "a", "svc"));
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.apply(mk_slice("ns", "b", "svc"));
    let r = send(
        &s,
        "GET",
        &format!(
            "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices?watch=true&resourceVersion={rv}&labelSelector=kubernetes.io%2Fservice-name%3Dsvc&allowWatchBookmarks=true"
        ),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked")
    );
    let mut body = r.into_body();
    let got = lines(&mut body, 1).await;
    assert_eq!(got[0]["type"], "ADDED");
    assert_eq!(got[0]["object"]["metadata"]["name"], "b");

    // Live: modified, leaves the selector (DELETED), bookmark, deleted elsewhere (not seen).
    let mut b = s.get("EndpointSlice", "ns", "b").unwrap();
    b["endpoints"] = json!([{"addresses": ["10.0.0.1"]}]);
    s.apply(b.clone());
    b["metadata"]["labels"]["kubernetes.io/service-name"] = json!("other");
    s.apply(b);
    s.bookmark();
    s.apply(mk_slice("elsewhere", "c", "svc"));
    s.delete("EndpointSlice", "ns", "a");
    let got = lines(&mut body, 4).await;
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["MODIFIED", "DELETED", "BOOKMARK", "DELETED"]);
    assert_eq!(got[2]["object"]["kind"], "EndpointSlice");
    assert_eq!(got[3]["object"]["metadata"]["name"], "a");
    assert_eq!(s.open_watches(), 1);
    s.drop_watches();
    assert!(lines(&mut body, 1).await.is_empty(), "the watch ended");
}

#[tokio::test]
async fn a_compacted_version_gets_410_and_timeout_ends_the_watch() {
    let s = FakeApiServer::start().await;
    let a = s.apply(mk_slice("ns", "a", "svc"));
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.apply(mk_slice("ns", "b", "svc"));
    s.compact();
    let path = "/apis/discovery.k8s.io/v1/endpointslices";
    let r = send(
        &s,
        "GET",
        &format!("{path}?watch=1&resourceVersion={rv}"),
        None,
    )
    .await;
    let got = lines(&mut r.into_body(), 2).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["type"], "ERROR");
    assert_eq!(got[0]["object"]["code"], 410);
    assert_eq!(got[0]["object"]["reason"], "Expired");

    let now = s.resource_version();
    let r = send(
        &s,
        "GET",
        &format!("{path}?watch=1&resourceVersion={now}&timeoutSeconds=1"),
        None,
    )
    .await;
    let t = std::time::Instant::now();
    assert!(lines(&mut r.into_body(), 1).await.is_empty());
    assert!(t.elapsed() < Duration::from_secs(3));

    // expire_watches: an open watch gets the ERROR line.
    let r = send(
        &s,
        "GET",
        &format!("{path}?watch=1&resourceVersion={now}"),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.expire_watches();
    let got = lines(&mut r.into_body(), 2).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["object"]["code"], 410);
}

#[tokio::test]
async fn status_patch_changes_status_only_and_spec_changes_bump_generation() {
    let s = FakeApiServer::start().await;
    let ie = json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"deployments": []},
    });
    let stored = s.apply(ie.clone());
    assert_eq!(stored["metadata"]["generation"], 1);
    let path = "/apis/infergate.io/v1/namespaces/ml/inferenceendpoints/iris/status";
    let r = send(
        &s,
        "PATCH",
        path,
        Some((
            "application/merge-patch+json",
            json!({"status": {"deployments": [{"name": "blue", "readyPods": 2}]}, "spec": {"x": 1}}),
        )),
    )
    .await;
    assert_eq!(r.status(), 200);
    let now = s.get("InferenceEndpoint", "ml", "iris").unwrap();
    assert_eq!(now["status"]["deployments"][0]["readyPods"], 2);
    assert_eq!(now["spec"], json!({"deployments": []}), "spec untouched");
    assert_eq!(now["metadata"]["generation"], 1);
    let mut changed = ie;
    changed["spec"]["traffic"] = json!({"blue": 100});
    assert_eq!(s.apply(changed)["metadata"]["generation"], 2);
    let reqs = s.requests();
    let last = reqs.last().unwrap();
    assert_eq!(last.method, "PATCH");
    assert_eq!(
        last.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let r = send(
        &s,
        "GET",
        "/apis/infergate.io/v1/namespaces/ml/inferenceendpoints/nope",
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn down_refuses_connections_until_up_again() {
    let s = FakeApiServer::start().await;
    s.set_down(true);
    let tcp = TcpStream::connect(s.addr()).await.unwrap();
    let res = async {
        let (mut snd, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(c);
        snd.send_request(
            http::Request::get("/api/v1/secrets")
                .header("host", "fake")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
    .await;
    assert!(res.is_err(), "a refused connection gives no answer");
    s.set_down(false);
    let (code, _) = get_json(&s, "/api/v1/secrets").await;
    assert_eq!(code, 200);
}

fn mk_deployment(ns: &str, name: &str, replicas: Option<i64>) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": name, "tier": "model"}}},
    });
    if let Some(r) = replicas {
        d["spec"]["replicas"] = json!(r);
    }
    d
}

async fn call(server: &FakeApiServer, method: &str, pq: &str, ct: &str, v: Value) -> (u16, Value) {
    let r = send(server, method, pq, Some((ct, v))).await;
    let code = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&b).unwrap())
}

#[test]
fn autoscale_kinds_extend_the_defaults() {
    let kinds = autoscale_kinds();
    assert!(default_kinds().iter().all(|k| kinds.contains(k)));
    for (av, plural) in [
        ("coordination.k8s.io/v1", "leases"),
        ("apps/v1", "deployments"),
        ("apps/v1", "statefulsets"),
        ("autoscaling/v2", "horizontalpodautoscalers"),
        ("events.k8s.io/v1", "events"),
        ("v1", "events"),
    ] {
        assert!(
            kinds
                .iter()
                .any(|k| k.api_version() == av && k.plural == plural),
            "{av} {plural}"
        );
    }
}

#[tokio::test]
async fn scale_subresource_get_put_patch() {
    let server = FakeApiServer::start_with(autoscale_kinds()).await;
    let mut writes = server.scale_writes();
    let d = server.apply(mk_deployment("ml", "m1", None));
    let base = "/apis/apps/v1/namespaces/ml/deployments/m1/scale";

    let (code, s) = get_json(&server, base).await;
    assert_eq!(code, 200);
    assert_eq!(s["apiVersion"], "autoscaling/v1");
    assert_eq!(s["kind"], "Scale");
    assert_eq!(s["metadata"]["name"], "m1");
    assert_eq!(s["metadata"]["namespace"], "ml");
    assert_eq!(
        s["metadata"]["resourceVersion"],
        d["metadata"]["resourceVersion"]
    );
    assert_eq!(s["spec"]["replicas"], 1, "default 1");
    assert_eq!(s["status"]["replicas"], 1);
    assert_eq!(s["status"]["selector"], "app=m1,tier=model");

    // PUT with the current resourceVersion.
    let mut put = s.clone();
    put["spec"]["replicas"] = json!(3);
    let (code, s2) = call(&server, "PUT", base, "application/json", put.clone()).await;
    assert_eq!(code, 200, "{s2}");
    assert_eq!(s2["spec"]["replicas"], 3);
    assert_ne!(
        s2["metadata"]["resourceVersion"],
        s["metadata"]["resourceVersion"]
    );
    let stored = server.get("Deployment", "ml", "m1").unwrap();
    assert_eq!(stored["spec"]["replicas"], 3);
    assert_eq!(
        stored["metadata"]["resourceVersion"],
        s2["metadata"]["resourceVersion"]
    );
    let w = writes.recv().await.unwrap();
    assert_eq!(
        (
            w.kind.as_str(),
            w.namespace.as_str(),
            w.name.as_str(),
            w.replicas
        ),
        ("Deployment", "ml", "m1", 3)
    );

    // A stale resourceVersion: 409, nothing written.
    put["spec"]["replicas"] = json!(7);
    let (code, st) = call(&server, "PUT", base, "application/json", put).await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(
        server.get("Deployment", "ml", "m1").unwrap()["spec"]["replicas"],
        3
    );

    // Merge patch.
    let (code, s3) = call(
        &server,
        "PATCH",
        base,
        "application/merge-patch+json",
        json!({"spec": {"replicas": 0}}),
    )
    .await;
    assert_eq!(code, 200, "{s3}");
    assert_eq!(s3["spec"]["replicas"], 0);
    assert_eq!(
        server.get("Deployment", "ml", "m1").unwrap()["spec"]["replicas"],
        0
    );
    assert_eq!(writes.recv().await.unwrap().replicas, 0);
    assert!(
        writes.try_recv().is_err(),
        "one write per successful scale write"
    );

    // status.replicas comes from the workload's status when it has one.
    let mut d = server.get("Deployment", "ml", "m1").unwrap();
    d["status"] = json!({"replicas": 2});
    server.apply(d);
    let (_, s4) = get_json(&server, base).await;
    assert_eq!(
        (
            s4["spec"]["replicas"].as_i64(),
            s4["status"]["replicas"].as_i64()
        ),
        (Some(0), Some(2))
    );
}

#[tokio::test]
async fn scale_subresource_of_statefulsets_and_missing_ones() {
    let server = FakeApiServer::start_with(autoscale_kinds()).await;
    let mut writes = server.scale_writes();
    let mut sts = mk_deployment("ml", "s1", Some(4));
    sts["kind"] = json!("StatefulSet");
    server.apply(sts);
    let base = "/apis/apps/v1/namespaces/ml/statefulsets/s1/scale";
    let (code, s) = get_json(&server, base).await;
    assert_eq!((code, s["spec"]["replicas"].as_i64()), (200, Some(4)));
    let (code, _) = call(
        &server,
        "PATCH",
        base,
        "application/merge-patch+json",
        json!({"spec": {"replicas": 5}}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(writes.recv().await.unwrap().kind, "StatefulSet");

    // No such workload; no such subresource.
    let (code, _) = get_json(
        &server,
        "/apis/apps/v1/namespaces/ml/deployments/nope/scale",
    )
    .await;
    assert_eq!(code, 404);
    server.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "ml"}}));
    let (code, st) = get_json(&server, "/api/v1/namespaces/ml/services/x/scale").await;
    assert_eq!((code, st["reason"].as_str()), (404, Some("NotFound")));
    let (code, _) = call(
        &server,
        "PUT",
        "/api/v1/namespaces/ml/services/x/scale",
        "application/json",
        json!({"spec": {"replicas": 1}}),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn post_events_with_generate_name() {
    let server = FakeApiServer::start_with(autoscale_kinds()).await;
    let ev = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"generateName": "m1."},
        "reason": "Scaled",
        "note": "1 -> 3",
    });
    let pq = "/apis/events.k8s.io/v1/namespaces/ml/events";
    let (code, a) = call(&server, "POST", pq, "application/json", ev.clone()).await;
    assert_eq!(code, 201, "{a}");
    let (code, b) = call(&server, "POST", pq, "application/json", ev).await;
    assert_eq!(code, 201);
    let (na, nb) = (
        a["metadata"]["name"].as_str().unwrap(),
        b["metadata"]["name"].as_str().unwrap(),
    );
    assert!(
        na.starts_with("m1.") && nb.starts_with("m1.") && na != nb,
        "{na} {nb}"
    );
    assert_eq!(a["metadata"]["namespace"], "ml");
    assert!(server.get("Event", "ml", na).is_some());
    // Core v1 events too.
    let (code, c) = call(
        &server,
        "POST",
        "/api/v1/namespaces/ml/events",
        "application/json",
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "m1."}}),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(c["apiVersion"], "v1");
    // Neither name nor generateName: 400.
    let (code, _) = call(
        &server,
        "POST",
        pq,
        "application/json",
        json!({"metadata": {}}),
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn recorded_requests_carry_time_and_code() {
    let server = FakeApiServer::start_with(autoscale_kinds()).await;
    let t0 = std::time::Instant::now();
    let _ = get_json(&server, "/apis/apps/v1/namespaces/ml/deployments/none").await;
    let _ = get_json(&server, "/apis/apps/v1/namespaces/ml/deployments").await;
    let t1 = std::time::Instant::now();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].status, reqs[1].status), (404, 200));
    assert!(reqs.iter().all(|r| t0 <= r.at && r.at <= t1));
    assert!(reqs[0].at <= reqs[1].at);
}
