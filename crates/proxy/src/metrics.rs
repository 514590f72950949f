//! Metric names (Prometheus style) and the process-wide recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
/// TLS handshakes that failed or timed out.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "infergate_tls_handshake_failures_total";
/// Time spent waiting for a pod slot, by `endpoint` and `deployment`.
pub const QUEUE_WAIT_SECONDS: &str = "infergate_queue_wait_seconds";
/// Slots taken now (the autoscale signal's numerator, with queued requests).
pub const DEPLOYMENT_BUSY_SLOTS: &str = "infergate_deployment_busy_slots";
/// Requests waiting for a slot now.
pub const DEPLOYMENT_QUEUED_REQUESTS: &str = "infergate_deployment_queued_requests";
/// Pods taking new requests.
pub const DEPLOYMENT_PODS: &str = "infergate_deployment_pods";
/// (busy + queued) / (pods x slots): above 1 means requests wait; what an autoscaler targets.
pub const DEPLOYMENT_UTILIZATION: &str = "infergate_deployment_utilization";
/// Requests sent again to another pod after a connection that never opened.
pub const RETRIES_TOTAL: &str = "infergate_retries_total";
/// Pods ejected after consecutive failures.
pub const POD_EJECTIONS_TOTAL: &str = "infergate_pod_ejections_total";
/// Mirror copies, by `result` (`ok`, `failed`, `skipped`).
pub const MIRROR_REQUESTS_TOTAL: &str = "infergate_mirror_requests_total";
/// Certificate reload attempts, by `result` (`ok` / `failed`).
pub use infergate_tls::CERT_RELOADS_TOTAL;

/// Histogram buckets in seconds: 0.5 ms to 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle (later calls return the same one).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // If another recorder was installed first (an embedding program), ours still renders its own metrics.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by endpoint, deployment and status."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Request head to end of response body."
    );
    describe_histogram!(
        UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Request sent to the pod until its response head."
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, "Requests being served now.");
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Requests refused by endpoint authentication, by endpoint and reason."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed or timed out."
    );
    describe_counter!(
        CERT_RELOADS_TOTAL,
        "Certificate reload attempts, by result."
    );
}
