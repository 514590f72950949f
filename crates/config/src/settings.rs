//! Per-deployment request settings and their resolution over the defaults.

use serde::{Deserialize, Serialize};

use crate::Defaults;

/// Per-deployment overrides of [`Defaults`]; every key is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestSettings {
    /// Time allowed for the pod's response head, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Requests a pod serves at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests_per_instance: Option<u32>,
    /// Time a request may wait for a free pod slot, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_wait_ms: Option<u64>,
    /// Largest request body accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
}

/// Request settings with every value filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedSettings {
    /// Time allowed for the pod's response head, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests a pod serves at once.
    pub max_concurrent_requests_per_instance: u32,
    /// Time a request may wait for a free pod slot, in milliseconds.
    pub max_queue_wait_ms: u64,
    /// Largest request body accepted, in bytes.
    pub max_request_body_bytes: u64,
}

impl From<Defaults> for ResolvedSettings {
    fn from(d: Defaults) -> Self {
        ResolvedSettings {
            request_timeout_ms: d.request_timeout_ms,
            max_concurrent_requests_per_instance: d.max_concurrent_requests_per_instance,
            max_queue_wait_ms: d.max_queue_wait_ms,
            max_request_body_bytes: d.max_request_body_bytes,
        }
    }
}

impl RequestSettings {
    /// These overrides laid over `defaults`.
    pub fn over(&self, defaults: Defaults) -> ResolvedSettings {
        ResolvedSettings {
            request_timeout_ms: self
                .request_timeout_ms
                .unwrap_or(defaults.request_timeout_ms),
            max_concurrent_requests_per_instance: self
                .max_concurrent_requests_per_instance
                .unwrap_or(defaults.max_concurrent_requests_per_instance),
            max_queue_wait_ms: self.max_queue_wait_ms.unwrap_or(defaults.max_queue_wait_ms),
            max_request_body_bytes: self
                .max_request_body_bytes
                .unwrap_or(defaults.max_request_body_bytes),
        }
    }
}
