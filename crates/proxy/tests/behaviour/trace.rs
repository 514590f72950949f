//! W3C trace context over real sockets: a client's `traceparent` accepted (the pod's parent is the
//! router's span), a trace started when none came, a malformed one replaced (never forwarded).

use infergate_proxy::trace::parse_traceparent;

use crate::support::*;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A router in front of an echo pod (it answers with the headers it got), with `tracing` when
/// `tracing` is some YAML for the section.
async fn echo_router(tracing: Option<&str>) -> (Router, mock_model::MockHandle) {
    let pod = mock("p", 0).await;
    let mut yaml = insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"], scoringPath: /echo}}]",
        pod.addr()
    ));
    if let Some(t) = tracing {
        yaml.push_str(&format!("tracing: {t}\n"));
    }
    (Router::start(&yaml).await, pod)
}

fn traced(traceparent: &str, tracestate: Option<&str>) -> http::Request<Body> {
    let mut q = post("/api/v1/endpoint/e/score", "{}");
    q.headers_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    if let Some(s) = tracestate {
        q.headers_mut().insert("tracestate", s.parse().unwrap());
    }
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_traceparent_is_forwarded_with_the_routers_span_as_parent() {
    let (r, _pod) = echo_router(Some("{samplingRatio: 0}")).await;
    let a = call(r.http(), traced(CLIENT, Some("vendor=abc"))).await;
    assert_eq!(a.status, 200);
    let up = &a.json()["headers"];
    let fwd = parse_traceparent(up["traceparent"].as_str().unwrap().as_bytes()).unwrap();
    let client = parse_traceparent(CLIENT.as_bytes()).unwrap();
    assert_eq!(fwd.trace_id, client.trace_id, "the client's trace");
    assert_ne!(
        fwd.parent_id, client.parent_id,
        "a new parent: the router's span"
    );
    assert!(
        fwd.sampled(),
        "the client's sampled flag wins over the ratio"
    );
    assert_eq!(up["tracestate"], "vendor=abc");
    // The client learns the router's span: the same traceparent the pod got.
    assert_eq!(a.header("traceparent"), up["traceparent"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_traceparent_starts_a_trace_sampled_by_the_ratio() {
    for (ratio, sampled) in [("1", true), ("0", false)] {
        let (r, _pod) = echo_router(Some(&format!("{{samplingRatio: {ratio}}}"))).await;
        let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
        let up = &a.json()["headers"];
        let fwd = parse_traceparent(up["traceparent"].as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(fwd.sampled(), sampled, "ratio {ratio}");
        assert_eq!(a.header("traceparent"), up["traceparent"]);
        // Router-made answers carry it too.
        let e = call(r.http(), post("/api/v1/endpoint/nope/score", "{}")).await;
        assert_eq!(e.status, 404);
        assert!(parse_traceparent(e.header("traceparent").as_bytes()).is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_traceparent_is_replaced_never_forwarded() {
    let bad = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ];
    let (r, _pod) = echo_router(Some("{}")).await;
    for b in bad {
        let a = call(r.http(), traced(b, Some("vendor=abc"))).await;
        assert_eq!(a.status, 200);
        let up = &a.json()["headers"];
        let fwd = up["traceparent"].as_str().unwrap();
        assert_ne!(fwd, b);
        let fwd = parse_traceparent(fwd.as_bytes()).expect("a valid replacement");
        assert_ne!(
            fwd.trace_id,
            parse_traceparent(CLIENT.as_bytes()).unwrap().trace_id
        );
        assert!(
            up.get("tracestate").is_none(),
            "tracestate of a bad parent passed: {b}"
        );
    }
    // Without `tracing` the router does not take part: a malformed context is removed, a valid
    // one passes as it is, and no traceparent comes back.
    let (r, _pod) = echo_router(None).await;
    let a = call(r.http(), traced(bad[0], Some("vendor=abc"))).await;
    let up = &a.json()["headers"];
    assert!(
        up.get("traceparent").is_none() && up.get("tracestate").is_none(),
        "{up}"
    );
    let a = call(r.http(), traced(CLIENT, Some("vendor=abc"))).await;
    let up = &a.json()["headers"];
    assert_eq!(up["traceparent"], CLIENT);
    assert_eq!(up["tracestate"], "vendor=abc");
    assert!(a.headers.get("traceparent").is_none());
}
