//! The data path's metric families: names (Prometheus style) and their descriptions, in one table.

use infergate_metrics::{Describe, Kind, Registry};

/// Getting a connection to the pod (a pooled one, or a new one opened), over all of a request's
/// attempts, by `endpoint`, `deployment` and `pooled` (`true` / `false`, the last attempt's).
pub const UPSTREAM_CONNECT_SECONDS: &str = "infergate_upstream_connect_seconds";
/// The pod's response head until the end of its body (the streaming phase), by `endpoint` and
/// `deployment`.
pub const RESPONSE_STREAM_SECONDS: &str = "infergate_response_stream_seconds";
/// Requests answered, by `endpoint`, `deployment` and `status`.
pub const REQUESTS_TOTAL: &str = "infergate_requests_total";
/// Time from request head to the end of the response body, by `endpoint` and `deployment`.
pub const REQUEST_DURATION_SECONDS: &str = "infergate_request_duration_seconds";
/// Time from sending to the pod until its response head, by `endpoint` and `deployment`.
pub const UPSTREAM_DURATION_SECONDS: &str = "infergate_upstream_duration_seconds";
/// Requests refused by endpoint authentication, by `endpoint` and `reason` (`missing`,
/// `bad_scheme`, `invalid_key`, `no_keys_configured`, `expired`, `wrong_audience`,
/// `bad_signature`, `malformed`). Never labelled with a key or token.
pub const AUTH_FAILURES_TOTAL: &str = "infergate_auth_failures_total";
/// Requests being served now (head received, response body not yet finished).
pub const REQUESTS_IN_FLIGHT: &str = "infergate_requests_in_flight";
/// TLS handshakes that failed or took longer than 10 s.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "infergate_tls_handshake_failures_total";
/// Client connections open now, by `listener` (`https`, `http`).
pub const CONNECTIONS_OPEN: &str = "infergate_connections_open";
/// HTTP/1.1 keep-alive connections parked now: idle, holding only the socket (and the TLS
/// session) until the client's next byte.
pub const CONNECTIONS_PARKED: &str = "infergate_connections_parked";
/// Connections closed at accept by a cap, by `reason` (`global_limit`, `per_client_limit`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "infergate_connections_refused_total";
/// Connections closed by a deadline, by `timeout` (`header_read`: no complete request head in
/// time, the first one counted from the accept; `idle`: no request in flight for too long).
pub const CONNECTION_TIMEOUTS_TOTAL: &str = "infergate_connection_timeouts_total";
/// Time spent waiting for a pod slot, by `endpoint` and `deployment`.
pub const QUEUE_WAIT_SECONDS: &str = "infergate_queue_wait_seconds";
/// Slots taken now (the autoscale signal's numerator, with queued requests).
pub const DEPLOYMENT_BUSY_SLOTS: &str = "infergate_deployment_busy_slots";
/// Requests waiting for a slot now.
pub const DEPLOYMENT_QUEUED_REQUESTS: &str = "infergate_deployment_queued_requests";
/// Pods taking new requests.
pub const DEPLOYMENT_PODS: &str = "infergate_deployment_pods";
/// Slot capacity now: pods x `maxConcurrentRequestsPerInstance` (busy / this = saturation).
pub const DEPLOYMENT_SLOTS: &str = "infergate_deployment_slots";
/// (busy + queued) / (pods x slots): above 1 means requests wait; what an autoscaler targets.
pub const DEPLOYMENT_UTILIZATION: &str = "infergate_deployment_utilization";
/// Requests refused at admission (no slot), by `endpoint`, `deployment` and `reason`
/// ([`ADMISSION_REJECTION_REASONS`]): the 503s the router makes itself, told apart.
pub const ADMISSION_REJECTIONS_TOTAL: &str = "infergate_admission_rejections_total";
/// The `reason` label values of [`ADMISSION_REJECTIONS_TOTAL`], one per 503 code:
/// `QueueTimeout`, `QueueFull`, `NoPodAvailable`, `ColdStartTimeout`, `OwnerUnavailable`.
pub const ADMISSION_REJECTION_REASONS: [&str; 5] = [
    "queue_timeout",
    "queue_full",
    "no_pods",
    "cold_start_timeout",
    "owner_unavailable",
];
/// Requests sent again to another pod after a connection that never opened.
pub const RETRIES_TOTAL: &str = "infergate_retries_total";
/// Pods ejected after consecutive failures.
pub const POD_EJECTIONS_TOTAL: &str = "infergate_pod_ejections_total";
/// Mirror copies, by `result` (`ok`, `failed`, `skipped`).
pub const MIRROR_REQUESTS_TOTAL: &str = "infergate_mirror_requests_total";
/// Requests whose client went away before the answer ended, by `endpoint` and `deployment`.
pub const REQUESTS_CANCELLED_TOTAL: &str = "infergate_requests_cancelled_total";
/// Requests ended by a stream timer, by `endpoint`, `deployment` and `timer`
/// (`stream_idle_timeout`, `max_stream_duration`).
pub const STREAM_TIMEOUTS_TOTAL: &str = "infergate_stream_timeouts_total";
/// Spans the OpenTelemetry collector accepted (`tracing.otlp`): each request's span and its
/// phase spans.
pub const OTLP_SPANS_EXPORTED_TOTAL: &str = "infergate_otlp_spans_exported_total";
/// Spans never exported, by `reason` ([`OTLP_DROP_REASONS`]).
pub const OTLP_SPANS_DROPPED_TOTAL: &str = "infergate_otlp_spans_dropped_total";
/// The `reason` label values of [`OTLP_SPANS_DROPPED_TOTAL`]: `queue_full` (the export queue
/// held `maxQueueSize` requests' spans: the collector is slow or down), `export_failed` (the
/// collector refused the batch, or did not answer within `exportTimeoutMs`, retries included).
pub const OTLP_DROP_REASONS: [&str; 2] = ["queue_full", "export_failed"];
/// Certificate reload attempts, by `result` (`ok` / `failed`).
pub use infergate_tls::CERT_RELOADS_TOTAL;

/// Every family the data path records, with its help text.
pub const FAMILIES: &[Describe] = &[
    Describe::new(
        REQUESTS_TOTAL,
        Kind::Counter,
        "Requests answered, by endpoint, deployment and status (a request that reached no endpoint, e.g. a 404, has only status).",
    ),
    Describe::seconds(
        REQUEST_DURATION_SECONDS,
        "Request head to the end of the response body, by endpoint and deployment.",
    ),
    Describe::seconds(
        UPSTREAM_DURATION_SECONDS,
        "Request sent to the pod until its response head, by endpoint and deployment.",
    ),
    Describe::seconds(
        UPSTREAM_CONNECT_SECONDS,
        "Getting a connection to the pod (pooled, or opened for the request) over all attempts, by endpoint, deployment and pooled (the last attempt's).",
    ),
    Describe::seconds(
        RESPONSE_STREAM_SECONDS,
        "The pod's response head until the end of its body, by endpoint and deployment.",
    ),
    Describe::seconds(
        QUEUE_WAIT_SECONDS,
        "Time waiting for a pod slot, by endpoint and deployment.",
    ),
    Describe::new(
        REQUESTS_IN_FLIGHT,
        Kind::Gauge,
        "Requests being served now (head received, response body not finished).",
    ),
    Describe::new(
        AUTH_FAILURES_TOTAL,
        Kind::Counter,
        "Requests refused by endpoint authentication, by endpoint and reason.",
    ),
    Describe::new(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        Kind::Counter,
        "TLS handshakes that failed or timed out.",
    ),
    Describe::new(
        CONNECTIONS_OPEN,
        Kind::Gauge,
        "Client connections open now, by listener (https, http).",
    ),
    Describe::new(
        CONNECTIONS_PARKED,
        Kind::Gauge,
        "HTTP/1.1 keep-alive connections idle for 1 s or more, parked: no HTTP buffers held until the client's next byte.",
    ),
    Describe::new(
        CONNECTIONS_REFUSED_TOTAL,
        Kind::Counter,
        "Connections closed at accept because a cap was reached, by reason (global_limit: limits.maxConnections, per_client_limit: limits.maxConnectionsPerClient).",
    ),
    Describe::new(
        CONNECTION_TIMEOUTS_TOTAL,
        Kind::Counter,
        "Connections closed by a deadline, by timeout (header_read: no complete request head within limits.headerReadTimeoutMs, the first counted from the accept; idle: no request in flight for limits.idleTimeoutMs).",
    ),
    Describe::new(
        DEPLOYMENT_BUSY_SLOTS,
        Kind::Gauge,
        "Pod slots taken now, by endpoint and deployment.",
    ),
    Describe::new(
        DEPLOYMENT_QUEUED_REQUESTS,
        Kind::Gauge,
        "Requests waiting for a pod slot now, by endpoint and deployment.",
    ),
    Describe::new(
        DEPLOYMENT_PODS,
        Kind::Gauge,
        "Pods taking new requests, by endpoint and deployment.",
    ),
    Describe::new(
        DEPLOYMENT_SLOTS,
        Kind::Gauge,
        "Pod slots in all: pods x maxConcurrentRequestsPerInstance, by endpoint and deployment.",
    ),
    Describe::new(
        DEPLOYMENT_UTILIZATION,
        Kind::Gauge,
        "(busy + queued) / (pods x slots), by endpoint and deployment; above 1 requests wait.",
    ),
    Describe::new(
        ADMISSION_REJECTIONS_TOTAL,
        Kind::Counter,
        "Requests refused at admission with 503, by endpoint, deployment and reason (queue_timeout, queue_full, no_pods, cold_start_timeout, owner_unavailable).",
    ),
    Describe::new(
        RETRIES_TOTAL,
        Kind::Counter,
        "Requests sent again to another pod after a connection that never opened, by endpoint and deployment.",
    ),
    Describe::new(
        POD_EJECTIONS_TOTAL,
        Kind::Counter,
        "Pods ejected after consecutive failures, by endpoint and deployment.",
    ),
    Describe::new(
        REQUESTS_CANCELLED_TOTAL,
        Kind::Counter,
        "Requests whose client went away before the answer ended (queued, at the pod, or mid-body), by endpoint and deployment; one that reached a pod keeps its slot until the pod is done or requestTimeoutMs passes.",
    ),
    Describe::new(
        STREAM_TIMEOUTS_TOTAL,
        Kind::Counter,
        "Requests ended by a stream timer (the client stopped reading or sending), by endpoint, deployment and timer (stream_idle_timeout: streamIdleTimeoutMs without a body frame; max_stream_duration: the exchange outlived maxStreamDurationMs).",
    ),
    Describe::new(
        OTLP_SPANS_EXPORTED_TOTAL,
        Kind::Counter,
        "Spans accepted by the OpenTelemetry collector (tracing.otlp): each sampled request's span and its phase spans.",
    ),
    Describe::new(
        OTLP_SPANS_DROPPED_TOTAL,
        Kind::Counter,
        "Spans never exported (tracing.otlp), by reason (queue_full: maxQueueSize requests' spans were waiting, the collector is slow or down; export_failed: the collector refused the batch or did not answer within exportTimeoutMs, retries included).",
    ),
    Describe::new(
        MIRROR_REQUESTS_TOTAL,
        Kind::Counter,
        "Mirror copies, by endpoint, deployment and result (ok, failed, skipped).",
    ),
];

/// Describes the data path's families (and the certificate reloads it serves) in `registry`.
pub fn describe(registry: &Registry) {
    registry.describe(FAMILIES);
    registry.describe(infergate_tls::FAMILIES);
}
