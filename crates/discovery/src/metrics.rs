//! Metric names of Kubernetes discovery (Prometheus style).

/// Gauge, `kind`, `namespace` (`*` = all): 0 after a failed list or watch; 1 again on the next
/// event, or once no retry has failed for twice the longest backoff.
pub const WATCH_UP: &str = "infergate_discovery_watch_up";
/// Counter, `kind`, `namespace`: failed lists and watches (each retried with backoff).
pub const WATCH_ERRORS_TOTAL: &str = "infergate_discovery_watch_errors_total";
/// Counter, `kind`, `namespace`: completed full lists (the first sync and every relist).
pub const LISTS_TOTAL: &str = "infergate_discovery_lists_total";
/// Gauge: 1 once every watch has completed its first list (readiness).
pub const SYNCED: &str = "infergate_discovery_synced";
/// Gauge, `state` = `routed` / `not_routed`: InferenceEndpoints by whether they serve a URL.
pub const ENDPOINTS: &str = "infergate_discovery_endpoints";
/// Counter: route tables published.
pub const PUBLISHES_TOTAL: &str = "infergate_discovery_publishes_total";
/// Histogram: from reading a batch of watch events to its route table being published.
pub const PUBLISH_DURATION_SECONDS: &str = "infergate_discovery_publish_duration_seconds";
/// Counter, `result` = `ok` / `failed`: status subresource writes.
pub const STATUS_WRITES_TOTAL: &str = "infergate_discovery_status_writes_total";

use infergate_metrics::{Describe, Kind};

/// Every family discovery records, with its help text.
pub const FAMILIES: &[Describe] = &[
    Describe::new(
        WATCH_UP,
        Kind::Gauge,
        "1 while a discovery watch works, 0 after a failed list or watch, by kind and namespace (* = all).",
    ),
    Describe::new(
        WATCH_ERRORS_TOTAL,
        Kind::Counter,
        "Failed discovery lists and watches (each retried with backoff), by kind and namespace.",
    ),
    Describe::new(
        LISTS_TOTAL,
        Kind::Counter,
        "Completed full lists (the first sync and every relist), by kind and namespace.",
    ),
    Describe::new(
        SYNCED,
        Kind::Gauge,
        "1 once every discovery watch has completed its first list.",
    ),
    Describe::new(
        ENDPOINTS,
        Kind::Gauge,
        "InferenceEndpoints by state (routed, not_routed).",
    ),
    Describe::new(
        PUBLISHES_TOTAL,
        Kind::Counter,
        "Route tables published by discovery.",
    ),
    Describe::seconds(
        PUBLISH_DURATION_SECONDS,
        "From reading a batch of watch events to its route table being published.",
    ),
    Describe::new(
        STATUS_WRITES_TOTAL,
        Kind::Counter,
        "InferenceEndpoint status writes, by result (ok, failed).",
    ),
];
