//! OpenTelemetry span export (`tracing.otlp`) over real sockets: the router in front of an echo
//! pod, exporting to the fake collector of `infergate-testkit`, which decodes what it receives
//! (OTLP/HTTP protobuf and OTLP/gRPC). A collector that refuses connections or never answers
//! holds no request, and what it costs is dropped and counted.

use std::time::Duration;

use infergate_proxy::trace::parse_traceparent;
use infergate_testkit::otlp::{Blackhole, FakeCollector, ReceivedSpan, Transport, refusing_url};

use crate::support::*;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const WAIT: Duration = Duration::from_secs(20);
/// `Span.kind` in OTLP: INTERNAL 1, SERVER 2.
const KIND_INTERNAL: i32 = 1;
const KIND_SERVER: i32 = 2;
/// `Status.code` in OTLP: ERROR 2.
const STATUS_ERROR: i32 = 2;

/// A router in front of an echo pod (it answers with the headers it got) and a deployment whose
/// pod refuses connections, exporting spans as `otlp` (the YAML of `tracing.otlp`) says.
async fn traced_router(ratio: &str, otlp: &str) -> (Router, mock_model::MockHandle) {
    let pod = mock("p", 0).await;
    let mut yaml = insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"], scoringPath: /echo}}]\n  - name: down\n    deployments: [{{name: d, pods: [\"127.0.0.1:{}\"]}}]",
        pod.addr(),
        free_port()
    ));
    yaml.push_str(&format!(
        "tracing: {{samplingRatio: {ratio}, otlp: {otlp}}}\n"
    ));
    (Router::start(&yaml).await, pod)
}

fn traced(traceparent: &str) -> http::Request<Body> {
    let mut q = post("/api/v1/endpoint/e/score", "{}");
    q.headers_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    q.headers_mut()
        .insert("user-agent", "otlp-test/1.0".parse().unwrap());
    q
}

fn of_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id() == trace).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_with_the_expected_attributes_over_http_and_grpc() {
    for (protocol, transport) in [
        ("http/protobuf", Transport::HttpProtobuf),
        ("grpc", Transport::Grpc),
    ] {
        let collector = FakeCollector::start().await;
        let otlp = format!(
            "{{endpoint: \"{}\", protocol: {protocol}, headers: {{x-api-key: s3cret}}, exportIntervalMs: 50}}",
            collector.url()
        );
        let (r, pod) = traced_router("1", &otlp).await;
        let a = call(r.http(), traced(CLIENT)).await;
        assert_eq!(a.status, 200, "{protocol}");
        let returned = parse_traceparent(a.header("traceparent").as_bytes()).unwrap();
        let at_pod = a.json()["headers"]["traceparent"]
            .as_str()
            .map(|t| parse_traceparent(t.as_bytes()).unwrap())
            .unwrap();
        let client = parse_traceparent(CLIENT.as_bytes()).unwrap();
        let trace = hex(&client.trace_id);
        let spans = collector
            .wait_for(WAIT, |s| of_trace(s, &trace).len() >= 5)
            .await;
        let mine = of_trace(&spans, &trace);
        assert_eq!(mine.len(), 5, "{protocol}: the request's span and 4 phases");

        // The request's span: the client's trace, the span id the pod saw as its parent and
        // the client got back, the client's span as its parent.
        let server = mine
            .iter()
            .find(|s| s.span.kind == KIND_SERVER)
            .expect("a SERVER span");
        assert_eq!(returned.trace_id, client.trace_id);
        assert_eq!(server.span_id(), hex(&at_pod.parent_id), "{protocol}");
        assert_eq!(server.span_id(), hex(&returned.parent_id));
        assert_eq!(server.parent_span_id(), hex(&client.parent_id));
        assert_eq!(server.span.name, "POST /api/v1/endpoint/{endpoint}/score");
        for (key, want) in [
            ("http.request.method", "POST".to_string()),
            ("url.path", "/api/v1/endpoint/e/score".into()),
            ("url.scheme", "http".into()),
            ("http.route", "/api/v1/endpoint/{endpoint}/score".into()),
            ("http.response.status_code", "200".into()),
            ("server.address", "router.test".into()),
            ("network.protocol.version", "1.1".into()),
            ("network.peer.address", "127.0.0.1".into()),
            ("user_agent.original", "otlp-test/1.0".into()),
            ("infergate.endpoint", "e".into()),
            ("infergate.deployment", "d".into()),
            ("infergate.pod", pod.addr().to_string()),
            ("infergate.attempts", "1".into()),
            ("infergate.request_id", a.header("x-request-id").to_string()),
        ] {
            assert_eq!(
                server.attr(key).as_deref(),
                Some(&*want),
                "{protocol}: {key}"
            );
        }
        assert!(server.attr("error.type").is_none());
        assert_eq!(
            server.resource_attr("service.name").as_deref(),
            Some("infergate")
        );
        assert!(server.resource_attr("service.instance.id").is_some());
        assert_eq!(server.scope, "infergate");

        // The phases: children of the request's span, inside it.
        let mut phases: Vec<_> = mine
            .iter()
            .filter(|s| s.span.kind == KIND_INTERNAL)
            .map(|s| {
                assert_eq!(s.parent_span_id(), server.span_id());
                assert!(s.span.start_time_unix_nano >= server.span.start_time_unix_nano);
                assert!(s.span.end_time_unix_nano <= server.span.end_time_unix_nano);
                s.span.name.as_str()
            })
            .collect();
        phases.sort();
        assert_eq!(phases, ["connect", "head", "queue", "stream"]);

        // Every export carried the configured header, over the configured transport.
        for e in collector.exports() {
            assert_eq!(e.transport, transport);
            assert_eq!(e.headers["x-api-key"], "s3cret");
        }

        // A pod that refuses: the span says the request failed.
        let e = call(r.http(), post("/api/v1/endpoint/down/score", "{}")).await;
        assert_eq!(e.status, 502);
        let trace = parse_traceparent(e.header("traceparent").as_bytes()).unwrap();
        let trace = hex(&trace.trace_id);
        let spans = collector
            .wait_for(WAIT, |s| {
                of_trace(s, &trace)
                    .iter()
                    .any(|s| s.span.kind == KIND_SERVER)
            })
            .await;
        let mine = of_trace(&spans, &trace);
        let server = mine.iter().find(|s| s.span.kind == KIND_SERVER).unwrap();
        assert_eq!(
            server.span.status.as_ref().map(|s| s.code),
            Some(STATUS_ERROR)
        );
        assert_eq!(
            server.attr("http.response.status_code").as_deref(),
            Some("502")
        );
        assert!(server.attr("error.type").is_some());
        assert!(
            server.parent_span_id().is_empty(),
            "a trace the router started"
        );
        assert!(mine.iter().any(|s| s.span.name == "connect"));
        assert!(!mine.iter().any(|s| s.span.name == "stream"));

        let m = metrics_text(&r).await;
        assert!(
            metric(&m, "infergate_otlp_spans_exported_total") >= 5.0,
            "{m}"
        );
        assert_eq!(metric(&m, "infergate_otlp_spans_dropped_total"), 0.0, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_exports_nothing_but_a_sampled_parent_is_exported() {
    let collector = FakeCollector::start().await;
    let otlp = format!(
        "{{endpoint: \"{}\", exportIntervalMs: 20}}",
        collector.url()
    );
    let (r, _pod) = traced_router("0", &otlp).await;
    for _ in 0..5 {
        let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(a.status, 200);
        let tp = parse_traceparent(a.header("traceparent").as_bytes()).unwrap();
        assert!(!tp.sampled());
    }
    let unsampled = CLIENT.replace("-01", "-00");
    assert_eq!(call(r.http(), traced(&unsampled)).await.status, 200);
    // Then one the client sampled: exported whatever the ratio, and after the others (the
    // queue is first in, first out), so nothing else can still be on its way.
    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(call(r.http(), traced(sampled)).await.status, 200);
    let spans = collector
        .wait_for(WAIT, |s| {
            s.iter().any(|s| {
                s.span.kind == KIND_SERVER && s.trace_id() == "0af7651916cd43dd8448eb211c80319c"
            })
        })
        .await;
    assert_eq!(spans.len(), 5, "only the sampled request's spans");
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id() == "0af7651916cd43dd8448eb211c80319c")
    );
}

/// Requests through a router whose collector is down: every one answered.
async fn serve_while_down(r: &Router, n: usize) {
    for i in 0..n {
        let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(a.status, 200, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_refuses_connections_costs_requests_nothing_and_drops_are_counted() {
    let otlp = format!(
        "{{endpoint: \"{}\", maxQueueSize: 4, maxExportBatchSize: 2, exportIntervalMs: 20, exportTimeoutMs: 500}}",
        refusing_url().await
    );
    let (r, _pod) = traced_router("1", &otlp).await;
    serve_while_down(&r, 20).await;
    // Each request is 5 spans (the request and 4 phases); every one is dropped, as queue_full
    // or export_failed, and none exported.
    let all_dropped = eventually(WAIT, async || {
        let m = metrics_text(&r).await;
        metric(&m, "infergate_otlp_spans_dropped_total") == 100.0
    })
    .await;
    let m = metrics_text(&r).await;
    assert!(all_dropped, "{m}");
    assert!(
        metric(
            &m,
            "infergate_otlp_spans_dropped_total{reason=\"export_failed\"}"
        ) > 0.0
    );
    assert_eq!(metric(&m, "infergate_otlp_spans_exported_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_holds_no_request_and_the_overflow_is_counted() {
    let hole = Blackhole::start().await;
    // The longest export timeout: an export in progress stays stuck for the whole test, so the
    // requests below complete while it hangs.
    let otlp = format!(
        "{{endpoint: \"{}\", maxQueueSize: 4, maxExportBatchSize: 2, exportIntervalMs: 10, exportTimeoutMs: 600000}}",
        hole.url()
    );
    let (r, _pod) = traced_router("1", &otlp).await;
    assert!(
        eventually(WAIT, async || {
            serve_while_down(&r, 1).await;
            hole.accepted() > 0
        })
        .await,
        "an export reached the collector"
    );
    serve_while_down(&r, 30).await;
    let m = metrics_text(&r).await;
    // One batch (at most 2 requests) hangs in the export, at most 4 wait: the other requests'
    // spans (5 each) were dropped.
    assert!(
        metric(
            &m,
            "infergate_otlp_spans_dropped_total{reason=\"queue_full\"}"
        ) >= (30.0 - 6.0) * 5.0,
        "{m}"
    );
    assert_eq!(metric(&m, "infergate_otlp_spans_exported_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_answers_errors_counts_the_failed_batches_and_later_ones_arrive() {
    let collector = FakeCollector::start().await;
    // 400 is not retryable: each batch fails at once.
    collector.fail_with(Some(http::StatusCode::BAD_REQUEST));
    let otlp = format!(
        "{{endpoint: \"{}\", maxExportBatchSize: 1, exportIntervalMs: 10}}",
        collector.url()
    );
    let (r, _pod) = traced_router("1", &otlp).await;
    serve_while_down(&r, 3).await;
    let failed = eventually(WAIT, async || {
        let m = metrics_text(&r).await;
        metric(
            &m,
            "infergate_otlp_spans_dropped_total{reason=\"export_failed\"}",
        ) == 15.0
    })
    .await;
    assert!(failed, "{}", metrics_text(&r).await);
    assert!(collector.requests() >= 3);
    assert!(collector.spans().is_empty());
    // The collector recovers: the next requests' spans arrive, on the same exporter.
    collector.fail_with(None);
    let a = call(r.http(), traced(CLIENT)).await;
    assert_eq!(a.status, 200);
    let spans = collector
        .wait_for(WAIT, |s| {
            of_trace(s, "4bf92f3577b34da6a3ce929d0e0e4736").len() == 5
        })
        .await;
    assert_eq!(spans.len(), 5);
    let m = metrics_text(&r).await;
    assert_eq!(metric(&m, "infergate_otlp_spans_exported_total"), 5.0);
}
